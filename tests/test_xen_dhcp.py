"""``xen://...?addressing=dhcp`` for real: PV domUs on a Xen nested under QEMU TCG whose lean
init asks dom0's dnsmasq for its lease; each gets the address its identity holds, by MAC,
no other MAC gets any, and nothing of it is left on dom0 after down or ``scalelab clean``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.labs import lab_session, run_ok
from test_xen import XEN_UP_AND_WAIT
from xenlab import BRIDGE_SUBNET, XenLab
from xenlab.lab import BRIDGE

from harness.backends.xen import XenBackend
from harness.backends.xen.dhcp import dhcp_dir, dom0_leases
from harness.identity import run_tag
from harness.image.cache import Image
from harness.image.vm import ASSETS
from harness.lab import Lab
from harness.runinfo import new_run_id
from harness.session import Session

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[1]
FOREIGN = "02:77:77:77:77:77"


@pytest.fixture(scope="module")
def session(xen_lab: XenLab, xen_image: Image, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Session]:
    with lab_session(tmp_path_factory.mktemp("reports"), guests="2",
                     backend=xen_lab.backend_url(addressing="dhcp"), subnet=BRIDGE_SUBNET,
                     image=str(xen_image.dir), ready_timeout="600") as s:
        yield s


@pytest.fixture(scope="module")
def lab(session: Session) -> Iterator[Lab]:
    lab = session.lab_up(2)
    yield lab
    lab.stop()


def _xen(lab: Lab) -> XenBackend:
    assert isinstance(lab.backend, XenBackend)
    return lab.backend


def _dnsmasq_on_dom0(xen_lab: XenLab, run_id: str) -> str:
    """The dnsmasq processes on dom0 serving run ``run_id`` (pid and command line)."""
    # [r]: the pattern does not match the shell that runs pgrep.
    return xen_lab.ssh(f"pgrep -a -f '[r]uns/{run_id}/dhcp/dnsmasq.conf' || true").stdout.strip()


def test_each_domu_holds_its_lease(lab: Lab, xen_lab: XenLab) -> None:
    xen = _xen(lab)
    for g in lab.guests:  # run_ok: SSH through dom0, the domU's host key pinned
        # The address came from the lease: the command line has none.
        words = run_ok(lab, g.name, "cat /proc/cmdline").split()
        assert [w for w in words if w.startswith("ip=")] == ["ip=dhcp"], words
        addr = run_ok(lab, g.name, "ip -4 -o addr show dev eth0")
        assert f"inet {g.spec.ip} " in addr, addr
        # No router offered: no way out of the lab.
        assert run_ok(lab, g.name, "ip -4 route show default").strip() == ""
    want = {g.spec.mac: g.spec.address for g in lab.guests}
    assert dom0_leases(xen.run) == want  # dnsmasq's DHCPACKs, from its log on dom0
    leases = xen_lab.ssh(f"cat {dhcp_dir(xen.run)}/dnsmasq.leases").stdout
    held = {(f[1], f[2]) for f in (line.split() for line in leases.splitlines()) if len(f) > 2}
    assert held == set(want.items()), leases
    assert xen.describe()["addressing"] == "dhcp"


def test_a_foreign_mac_gets_nothing(lab: Lab, xen_lab: XenLab) -> None:
    """The guests' own DHCP client, on dom0's bridge from a MAC no domU has (a veth into a
    namespace of dom0), gets no offer, and dnsmasq says it ignored it."""
    xen = _xen(lab)
    tag = run_tag(lab.run_id)
    client = f"/tmp/scalelab-dhcp-client-{tag}"
    xen.run.dom0.write_text(client, (ASSETS / "guest/dhcp-client").read_text())
    ns, veth = f"sl-{tag}-dhcpx", f"slz{tag}"
    res = xen_lab.ssh(
        f"ip netns add {ns} && ip link add {veth} type veth peer name eth0 address {FOREIGN} "
        f"netns {ns} && ip link set {veth} master {BRIDGE} up && ip -n {ns} link set eth0 up "
        f"&& ip netns exec {ns} python3 {client} eth0 4; echo rc=$?; "
        f"ip netns del {ns}; ip link del {veth} 2>/dev/null; rm -f {client}")
    assert "rc=1" in res.stdout and "no offer" in res.stderr, res
    log = xen_lab.ssh(f"cat {dhcp_dir(xen.run)}/dnsmasq.log").stdout
    assert f"{FOREIGN} ignored" in log
    assert FOREIGN not in dom0_leases(xen.run)


def test_nothing_left_on_dom0_after_down(lab: Lab, xen_lab: XenLab) -> None:
    assert _dnsmasq_on_dom0(xen_lab, lab.run_id) != ""
    assert lab.stop() == []
    assert _dnsmasq_on_dom0(xen_lab, lab.run_id) == ""
    left = xen_lab.ssh(f"ls -d /var/lib/scalelab/xen/runs/{lab.run_id}* 2>/dev/null; "
                       "ip netns list").stdout.split()
    assert left == [], left


def test_clean_stops_the_dhcp_server(xen_lab: XenLab, xen_image: Image,
                                     tmp_path: Path) -> None:
    """The owner of a dhcp run is SIGKILLed; `scalelab clean` stops its dnsmasq on dom0 (and
    takes the rest) from the journal alone."""
    env = {**os.environ, "SCALELAB_STATE_ROOT": str(tmp_path / "state")}
    run_id = new_run_id()
    proc = subprocess.Popen(
        [sys.executable, "-c", XEN_UP_AND_WAIT, xen_lab.backend_url(addressing="dhcp"),
         str(xen_image.dir), BRIDGE_SUBNET, "10.213.254.1/24", run_id, str(tmp_path)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("UP "), line
        assert _dnsmasq_on_dom0(xen_lab, run_id) != ""
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _dnsmasq_on_dom0(xen_lab, run_id) != ""  # it outlives its owner...
    out = subprocess.run([sys.executable, "-m", "harness.cli", "clean", run_id], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert _dnsmasq_on_dom0(xen_lab, run_id) == ""  # ...and clean stops it
    left = xen_lab.ssh(f"xl list | grep -c {run_id}; ls -d /var/lib/scalelab/xen/runs/{run_id} "
                       "2>/dev/null").stdout.split()
    assert left == ["0"], left
