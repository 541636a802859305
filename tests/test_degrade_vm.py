"""The degrade fault inside real VMs (qemu, TCG): netem in the guest's own kernel, behind a
prio band that keeps the harness's SSH undelayed; and regions built from it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.labs import lab_session, run_ok
from helpers.probes import median_rtt, ssh_rtt, start_echo

from harness.faults import Nemesis
from harness.image.cache import Image
from harness.lab import Lab
from harness.regions import regions
from harness.session import Session
from harness.store import Recorder
from harness.workloads import Agents

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def session(vm_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with lab_session(tmp_path_factory.mktemp("reports"), guests="2",
                     backend="qemu://?accel=tcg") as s:
        yield s


@pytest.fixture(scope="module")
def lab(session: Session) -> Iterator[Lab]:
    lab = session.lab_up(2)
    yield lab
    lab.stop()


def _rtt(lab: Lab, src: str, dst: str) -> float:
    return median_rtt(lab.require_fleet(), src, dst)


def _ssh_rtt(lab: Lab, name: str) -> float:
    return ssh_rtt(lab.require_fleet(), name)


def test_qemu_delay_100ms_between_two_vms(session: Session, lab: Lab) -> None:
    fleet = lab.require_fleet()
    g0, g1 = fleet.names
    rec = session.recorder("degrade-vm", 2)
    agents = Agents(fleet, rec)
    start_echo(agents, g1)
    try:
        _delay_100ms(lab, rec, g0, g1)
    finally:
        agents.stop_servers()


def _delay_100ms(lab: Lab, rec: Recorder, g0: str, g1: str) -> None:
    fleet = lab.require_fleet()
    rtt0, ssh0 = _rtt(lab, g0, g1), _ssh_rtt(lab, g1)
    nem = Nemesis(lab.backend, rec, fleet)
    with nem.degraded([g0], delay="100ms", jitter="10ms", to=[g1]):
        qdiscs = run_ok(lab, g0, "tc qdisc show; tc filter show dev eth0")
        rtt1, ssh1 = _rtt(lab, g0, g1), _ssh_rtt(lab, g1)
        ssh1_src = _ssh_rtt(lab, g0)  # the degraded guest's own control connection
    rtt2 = _rtt(lab, g0, g1)
    print(f"qemu: RTT g000→g001 median {rtt0:.1f} → {rtt1:.1f} → {rtt2:.1f} ms; SSH to g001 "
          f"{ssh0 * 1e3:.0f} → {ssh1 * 1e3:.0f} ms, to g000 (degraded) {ssh1_src * 1e3:.0f} ms")
    assert "qdisc prio 1: dev eth0 root" in qdiscs and "netem" in qdiscs and "delay 100ms" in qdiscs
    assert rtt1 >= rtt0 + 90, (rtt0, rtt1)
    # 100 ms on the control path would add at least 100 ms to every command's round trip.
    assert ssh1 < ssh0 + 0.05 and ssh1_src < ssh0 + 0.05, (ssh0, ssh1, ssh1_src)
    assert rtt2 < rtt0 + 20, (rtt0, rtt2)
    assert "netem" not in run_ok(lab, g0, "tc qdisc show")
    rows = rec.timings()
    (band,) = rows[(rows["phase"] == "fault") & (rows["op"] == "degrade")]["error"]
    assert band == "delay 100ms ±10ms → g001"


def test_qemu_regions_40ms_apart(session: Session, lab: Lab) -> None:
    """Two regions of one VM each, 40 ms apart one way: the round trip grows by 80 ms."""
    fleet = lab.require_fleet()
    g0, g1 = fleet.names
    rec = session.recorder("regions-vm", 2)
    agents = Agents(fleet, rec)
    start_echo(agents, g1)
    try:
        rtt0 = _rtt(lab, g0, g1)
        nem = Nemesis(lab.backend, rec, fleet)
        with regions(nem, {"a": [g0], "b": [g1]}, between="40ms", inside="1ms") as matrix:
            rtt1 = _rtt(lab, g0, g1)
        rtt2 = _rtt(lab, g0, g1)
    finally:
        agents.stop_servers()
    print(f"qemu regions: RTT {rtt0:.1f} → {rtt1:.1f} → {rtt2:.1f} ms")
    assert set(matrix) == {("a", "b"), ("b", "a"), ("a", "a"), ("b", "b")}
    assert rtt1 >= rtt0 + 72, (rtt0, rtt1)
    assert rtt2 < rtt0 + 20, (rtt0, rtt2)
    for g in (g0, g1):
        assert "netem" not in run_ok(lab, g, "tc qdisc show")
