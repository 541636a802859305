"""The degrade fault inside PV domUs on a nested Xen (QEMU TCG): netem in the domU's kernel,
the control peer (dom0, the jump host) kept in the band without netem."""

from __future__ import annotations

import time

import pytest
from helpers.labs import lab_session, run_ok
from helpers.probes import median_rtt, ssh_rtt, start_echo
from xenlab import BRIDGE_SUBNET, XenLab

from harness.faults import Nemesis
from harness.image.cache import Image
from harness.workloads import Agents

pytestmark = pytest.mark.vm


def test_xen_delay_100ms_between_two_domus(xen_lab: XenLab, xen_image: Image,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    t0 = time.monotonic()
    with lab_session(tmp_path_factory.mktemp("reports"), guests="2",
                     backend=xen_lab.backend_url(), subnet=BRIDGE_SUBNET,
                     image=str(xen_image.dir), ready_timeout="600") as s:
        lab = s.lab_up(2)
        fleet = lab.require_fleet()
        g0, g1 = fleet.names
        rec = s.recorder("degrade-xen", 2)
        agents = Agents(fleet, rec)
        start_echo(agents, g1)
        rtt0, ssh0 = median_rtt(fleet, g0, g1), ssh_rtt(fleet, g1)
        with Nemesis(lab.backend, rec, fleet).degraded([g0], delay="100ms", jitter="10ms",
                                                        to=[g1]):
            qdiscs = run_ok(lab, g0, "tc qdisc show")
            rtt1, ssh1 = median_rtt(fleet, g0, g1), ssh_rtt(fleet, g1)
            ssh1_src = ssh_rtt(fleet, g0)
        rtt2 = median_rtt(fleet, g0, g1)
        agents.stop_servers()
        print(f"xen: RTT g000→g001 median {rtt0:.1f} → {rtt1:.1f} → {rtt2:.1f} ms; SSH to "
              f"g001 {ssh0 * 1e3:.0f} → {ssh1 * 1e3:.0f} ms, to g000 (degraded) "
              f"{ssh1_src * 1e3:.0f} ms ({time.monotonic() - t0:.0f} s with bring-up)")
        assert "netem" in qdiscs and "delay 100ms" in qdiscs
        assert rtt1 >= rtt0 + 90, (rtt0, rtt1)
        # Through dom0 under nested TCG SSH is noisy; a delayed control path would add
        # 100 ms or more to every command.
        assert ssh1 < ssh0 + 0.08 and ssh1_src < ssh0 + 0.08, (ssh0, ssh1, ssh1_src)
        assert rtt2 < rtt0 + 20, (rtt0, rtt2)
        assert "netem" not in run_ok(lab, g0, "tc qdisc show")
