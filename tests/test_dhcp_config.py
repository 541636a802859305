"""``addressing=dhcp`` without VMs: the shared option and dnsmasq configuration, the domUs'
and VMs' command lines, dom0's probe, and (as root) xen's dom0 scripts run for real against
a dnsmasq on a bridge of this host standing in for dom0's: leases by MAC, a guest added by
SIGHUP, nothing for a foreign MAC, stopped from the journal."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends import dhcpserver, load_backend, parse_backend
from harness.backends.base import RunContext
from harness.backends.qemu.argv import kernel_cmdline
from harness.backends.qemu.options import QemuOptions
from harness.backends.xen import LocalDom0, Target, XenBackend, XenOptions
from harness.backends.xen.cleanup import removed_key
from harness.backends.xen.dhcp import dhcp_dir, dom0_leases, serve_leases, stop_on
from harness.backends.xen.domu import domain_config
from harness.backends.xen.labrun import XenRun
from harness.errors import LabError, UserError
from harness.identity import XEN_OUI, KeyPair, choose_subnet, make_specs, run_tag
from harness.image.vm import ASSETS
from harness.runinfo import new_run_id
from harness.state import RunState

NET = ipaddress.IPv4Network("10.9.0.0/24")
FILES = {"vmlinuz": "/k", "initrd.img": "/i", "base.img": "/b"}


def test_config_leases_only_known_macs(tmp_path: Path) -> None:
    specs = make_specs("r", 2, NET)
    lines = dhcpserver.config_text("slb-x", specs, tmp_path / "l", mtu=1450).splitlines()
    assert "dhcp-ignore=tag:!known" in lines and "interface=slb-x" in lines
    assert "dhcp-range=10.9.0.0,static,255.255.255.0,infinite" in lines
    assert f"dhcp-host={specs[1].mac},10.9.0.3,{specs[1].name},infinite" in lines
    assert "dhcp-option=option:router" in lines and "dhcp-option=option:mtu,1450" in lines
    # With a hosts file the guests' lines are there, not in the configuration.
    text = dhcpserver.config_text("xenbr0", specs, "/r/l", hosts_file="/r/h")
    assert "dhcp-hostsfile=/r/h" in text.splitlines() and "dhcp-host=" not in text
    assert dhcpserver.host_lines(specs)[0] == f"{specs[0].mac},10.9.0.2,g000,infinite"


def test_acked_reads_dnsmasq_log() -> None:
    log = ("Dec  1 15:00:01 dnsmasq-dhcp[9]: 1 DHCPDISCOVER(xenbr0) 02:00:00:00:00:01\n"
           "Dec  1 15:00:01 dnsmasq-dhcp[9]: 1 DHCPACK(xenbr0) 10.9.0.2 02:00:00:00:00:AA g0\n"
           "Dec  1 15:00:02 dnsmasq-dhcp[9]: DHCP, static leases only on 10.9.0.0\n")
    assert dhcpserver.acked(log) == {"02:00:00:00:00:aa": "10.9.0.2"}
    assert dhcpserver.serving(log) and not dhcpserver.serving("started, version 2.89")


@pytest.mark.parametrize("backend", ["qemu", "xen"])
def test_one_addressing_option_for_both_backends(backend: str) -> None:
    def parse(value: str) -> str:
        options = {"addressing": value}
        if backend == "xen":
            return XenOptions.parse({"host": "local", **options}).addressing
        return QemuOptions.parse({**options, "net": "tap"}).addressing

    assert parse("dhcp") == "dhcp" and parse("static") == "static"
    with pytest.raises(UserError) as err:
        parse("bootp")
    assert str(err.value) == (f"{backend} option addressing='bootp': use addressing=static "
                              "or addressing=dhcp")
    assert XenOptions.parse({"host": "local"}).addressing == "static"


def test_bad_addressing_in_a_xen_url_is_one_line() -> None:
    with pytest.raises(UserError, match=r"^xen option addressing='DHCP': use") as err:
        load_backend(parse_backend("xen://local?addressing=DHCP"))
    assert "\n" not in str(err.value)


def test_domu_and_vm_cmdlines_ask_for_their_lease() -> None:
    """dhcp replaces the static ip= (there is no address on the command line at all)."""
    spec = make_specs("r", 3, NET, oui=XEN_OUI)[2]
    xen_opts = XenOptions.parse({"host": "local", "addressing": "dhcp"})
    for line in (domain_config(spec, xen_opts, FILES, "r", "/d").extra,
                 kernel_cmdline(QemuOptions.parse({"addressing": "dhcp", "net": "tap"}), spec)):
        words = line.split()
        assert [w for w in words if w.startswith("ip=")] == ["ip=dhcp"], line
        assert str(spec.ip.ip) not in line and "hostname=g002" in words
    static = domain_config(spec, XenOptions.parse({"host": "local"}), FILES, "r", "/d").extra
    assert "ip=10.9.0.4:::255.255.255.0:g002:eth0:off" in static.split()


def test_dom0_without_dnsmasq_is_refused_for_dhcp() -> None:
    from test_xen_config import GOOD_PROBE, XL_INFO, FakeDom0, answer

    def probe(addressing: str, probe_text: str) -> None:
        be = XenBackend({"host": "local", "addressing": addressing})
        be.dom0 = FakeDom0({"xl": answer(0, XL_INFO, ""), "probe": answer(0, probe_text, "")})
        be.probe(2)

    probe("static", GOOD_PROBE)  # static: dnsmasq is not needed
    with pytest.raises(UserError, match=r"`dnsmasq` is missing, which addressing=dhcp") as err:
        probe("dhcp", GOOD_PROBE)
    assert "\n" not in str(err.value)
    probe("dhcp", GOOD_PROBE + "has_dnsmasq=yes\n")


def test_stop_dhcp_has_its_own_removed_key() -> None:
    t = Target(local=True)
    res: Any = {"kwargs": {"target": t.as_kwargs(), "conf": "/w/runs/r/dhcp/dnsmasq.conf"}}
    assert removed_key(t, res) == (t.pool_key, "dhcp", "/w/runs/r/dhcp/dnsmasq.conf")


# -- xen's dom0 scripts, for real, on a bridge of this host -----------------------------------


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@pytest.fixture
def bridge(root: None) -> Iterator[tuple[str, ipaddress.IPv4Network]]:
    """A bridge standing in for dom0's, with an address in a free lab subnet."""
    net = choose_subnet(None, 4)
    name = f"slxd{run_tag(new_run_id())}"[:15]
    _sh("ip", "link", "add", name, "type", "bridge")
    try:
        _sh("ip", "addr", "add", f"{net.network_address + 1}/{net.prefixlen}", "dev", name)
        _sh("ip", "link", "set", name, "up")
        yield name, net
    finally:
        _sh("ip", "link", "del", name, check=False)


def _client(ns: str, veth: str, bridge: str, mac: str) -> subprocess.CompletedProcess[str]:
    """The guests' own DHCP client on ``bridge`` from ``mac`` (a veth into netns ``ns``)."""
    _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "address", mac,
        "netns", ns)
    try:
        _sh("ip", "link", "set", veth, "master", bridge, "up")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return _sh("ip", "netns", "exec", ns, "python3", str(ASSETS / "guest/dhcp-client"),
                   "eth0", "5", check=False)
    finally:
        _sh("ip", "link", "del", veth, check=False)


def _local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> XenRun:
    import harness.state

    monkeypatch.setattr(harness.state, "STATE_ROOT", tmp_path / "state")
    run_id = new_run_id()
    ctx = RunContext(run_id, RunState.create(run_id, backend="xen"), tmp_path,
                     KeyPair.generate().public_openssh, options={})
    (tmp_path / "dom0").mkdir()
    return XenRun(ctx, LocalDom0(Target(local=True)), str(tmp_path / "dom0" / run_id), {})


@pytest.mark.integration
def test_dom0_scripts_lease_add_ignore_and_stop(bridge: tuple[str, ipaddress.IPv4Network],
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    name, net = bridge
    run = _local_run(tmp_path, monkeypatch)
    opts = XenOptions.parse({"host": "local", "bridge": name, "addressing": "dhcp"})
    specs = make_specs(run.ctx.run_id, 2, net, oui=XEN_OUI)
    target = Target(local=True).as_kwargs()

    def record(func: str, **kw: Any) -> None:
        run.ctx.state.record("callback", target=f"harness.backends.xen:{func}",
                             kwargs={"target": target, **kw})

    conf = str(Path(dhcp_dir(run)) / "dnsmasq.conf")
    ns = f"sl-{run_tag(run.ctx.run_id)}-dhcpx"
    veth = f"slz{run_tag(run.ctx.run_id)}"
    _sh("ip", "netns", "add", ns)
    try:
        serve_leases(run, opts, specs[:1], record)
        got = _client(ns, veth, name, specs[0].mac)
        assert got.stdout.split()[0] == str(specs[0].ip), got
        # A second up of the run: its guest is added to the running server (SIGHUP).
        pid = (Path(dhcp_dir(run)) / "dnsmasq.pid").read_text().strip()
        serve_leases(run, opts, specs[1:], record)
        assert (Path(dhcp_dir(run)) / "dnsmasq.pid").read_text().strip() == pid
        got = _client(ns, veth, name, specs[1].mac)
        assert got.stdout.split()[0] == str(specs[1].ip), got
        foreign = _client(ns, veth, name, "02:77:77:77:77:77")
        assert foreign.returncode == 1 and "no offer" in foreign.stderr, foreign
        assert "02:77:77:77:77:77 ignored" in (Path(dhcp_dir(run)) / "dnsmasq.log").read_text()
        assert dom0_leases(run) == {s.mac: s.address for s in specs}
        # A pid file naming another process (a reused pid) stops nothing.
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        with subprocess.Popen(["sleep", "30"]) as other:
            (other_dir / "dnsmasq.pid").write_text(f"{other.pid}\n")
            stop_on(run.dom0, str(other_dir / "dnsmasq.conf"))
            assert other.poll() is None and not (other_dir / "dnsmasq.pid").exists()
            other.kill()
        assert _sh("pgrep", "-f", conf, check=False).returncode == 0
        # The journal alone (what `scalelab clean` runs) stops it.
        assert run.ctx.state.remove_all() == []
        assert _sh("pgrep", "-f", conf, check=False).returncode == 1
        assert not (Path(dhcp_dir(run)) / "dnsmasq.pid").exists()
    finally:
        _sh("ip", "netns", "del", ns, check=False)
        with contextlib.suppress(LabError):
            stop_on(run.dom0, conf)  # only the dnsmasq of this conf, by its pid file
