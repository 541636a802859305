"""``qemu://?addressing=dhcp``: real VMs (TCG) whose lean init asks the lab's dnsmasq for
its lease; each gets the address its identity holds, by MAC, and no other MAC gets any."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.labs import lab_session, run_ok
from leaks import Snapshot, snapshot

from harness.backends.qemu import QemuBackend, dhcp
from harness.identity import run_tag
from harness.image.cache import Image
from harness.image.vm import ASSETS
from harness.lab import Lab
from harness.session import Session

pytestmark = pytest.mark.vm
N = 2


# The configuration it is given: tests/test_dhcp_config.py.


@pytest.fixture(scope="module")
def before(root: None) -> Snapshot:
    return snapshot()


@pytest.fixture(scope="module")
def session(vm_image: Image, before: Snapshot, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Session]:
    with lab_session(tmp_path_factory.mktemp("reports"), guests=str(N),
                     backend="qemu://?accel=tcg&net=tap&addressing=dhcp") as s:
        yield s


@pytest.fixture(scope="module")
def lab(session: Session) -> Iterator[Lab]:
    lab = session.lab_up(N)
    yield lab
    lab.stop()


def _qemu(lab: Lab) -> QemuBackend:
    assert isinstance(lab.backend, QemuBackend)
    return lab.backend


def test_each_vm_leased_its_own_address(lab: Lab) -> None:
    qemu = _qemu(lab)
    for g in lab.guests:
        # The address came from the lease, not from the command line.
        cmdline = run_ok(lab, g.name, "cat /proc/cmdline")
        assert "ip=dhcp" in cmdline.split()
        addr = run_ok(lab, g.name, "ip -4 -o addr show dev eth0")
        assert f"inet {g.spec.ip} " in addr, addr
        assert "(dhcp" in Path(str(g.info["console"])).read_text(errors="replace")
    got = dhcp.leases(qemu.run.dir / "dhcp")
    assert got == {g.spec.mac: g.spec.address for g in lab.guests}
    # No router and no DNS server offered: no way out of the lab.
    assert run_ok(lab, lab.guests[0].name, "ip -4 route show default").strip() == ""


def test_a_foreign_mac_gets_nothing(lab: Lab) -> None:
    """The guests' own DHCP client, on the lab bridge from a MAC no guest has, gets no offer
    (and dnsmasq says it ignored it)."""
    qemu = _qemu(lab)
    ns, veth = f"sl-{run_tag(lab.run_id)}-dhcpx", f"slz{run_tag(lab.run_id)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                        "address", "02:77:77:77:77:77", "netns", ns], check=True)
        subprocess.run(["ip", "link", "set", veth, "master", qemu.bridge, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        res = subprocess.run(["ip", "netns", "exec", ns, "python3",
                              str(ASSETS / "guest/dhcp-client"), "eth0", "4"],
                             capture_output=True, text=True)
        assert res.returncode == 1 and "no offer" in res.stderr, res
        log = (qemu.run.dir / "dhcp" / "dnsmasq.log").read_text()
        assert "02:77:77:77:77:77 ignored" in log
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)


def test_nothing_left(lab: Lab, before: Snapshot) -> None:
    where = _qemu(lab).run.dir / "dhcp"
    conf = str(where / "dnsmasq.conf")
    assert subprocess.run(["pgrep", "-f", conf], capture_output=True).returncode == 0
    assert lab.stop() == []
    assert subprocess.run(["pgrep", "-f", conf], capture_output=True).returncode == 1
    marks = [lab.run_id, run_tag(lab.run_id)]
    left = {k: {v for v in vs if any(m in v for m in marks)}
            for k, vs in before.diff(snapshot()).items()}
    assert not any(left.values()), left
    assert not where.exists()


def test_dhcp_vms_on_two_lab_hosts(vm_image: Image, tmp_path: Path) -> None:
    """Two emulated lab hosts, a VM on each: each dnsmasq leases its own VM the address of
    its block (with the run's prefix), and the VMs reach each other across the tunnel."""
    with lab_session(tmp_path / "r", guests="2", cluster="local:2",
                     backend="qemu://?accel=tcg&net=tap&addressing=dhcp") as s:
        lab = s.lab_up(2)
        a, b = lab.guests
        assert a.lab_host != b.lab_host
        for g in lab.guests:
            addr = run_ok(lab, g.name, "ip -4 -o addr show dev eth0")
            assert f"inet {g.spec.ip} " in addr, addr
        banner = run_ok(lab, a.name, "python3 -c \"import socket; print(socket.create_connection("
                        f"('{b.spec.address}', 22), timeout=5).recv(7))\"")
        assert "SSH-2.0" in banner
