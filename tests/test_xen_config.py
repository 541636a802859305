"""The xen backend without a hypervisor: rendered xl configs parsed back field by field
against the xl.cfg(5) rules, option parsing, and the one-line errors for bad input."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from harness.backends import load_backend, parse_backend, xen
from harness.backends.base import Guest, RunContext
from harness.backends.xen import (
    Dom0,
    DomainConfig,
    DomainWatch,
    Target,
    XenBackend,
    XenOptions,
    connect,
    disk_spec,
    domain_name,
    guest_cmdline,
    known_hosts_line,
    parse_xl_list_long,
    render_config,
    vif_spec,
    xl_string,
)
from harness.backends.xen import backend as xen_backend
from harness.backends.xen.labrun import XenRun
from harness.errors import LabError, UserError
from harness.identity import XEN_OUI, KeyPair, make_specs
from harness.image.cache import Image
from harness.plumbing.result import CommandResult
from harness.ssh import load_private_key
from harness.state import RunState

RUN = "20260101-000000-abcdef"
SUBNET = ipaddress.IPv4Network("10.213.9.0/24")

# -- a parser for xl's config syntax (xl.cfg(5) "SYNTAX") ------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*) |
        (?P<dq>"[^"\\\n]*") |
        (?P<sq>'[^'\n]*') |
        (?P<num>0x[0-9a-fA-F]+|\d+) |
        (?P<key>[A-Za-z_][A-Za-z0-9_]*) |
        (?P<punct>[=\[\],;\n])
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        if text[pos] in " \t":
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        assert m is not None and m.end() > pos, f"xl.cfg syntax error at {text[pos:pos + 30]!r}"
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "comment":
            yield kind, m.group(kind)


def parse_xl_cfg(text: str) -> dict[str, Any]:
    """KEY=VALUE pairs separated by newlines or ';'; VALUE a string, number or list."""
    toks = [t for t in _tokens(text)]
    out: dict[str, Any] = {}
    i = 0

    def value(i: int) -> tuple[Any, int]:
        kind, tok = toks[i]
        if kind in ("dq", "sq"):
            return tok[1:-1], i + 1
        if kind == "num":
            return int(tok, 0), i + 1
        assert tok == "[", f"unexpected {tok!r}"
        items: list[Any] = []
        i += 1
        while True:
            while toks[i] == ("punct", "\n"):
                i += 1
            if toks[i] == ("punct", "]"):
                return items, i + 1
            item, i = value(i)
            items.append(item)
            while toks[i] == ("punct", "\n"):
                i += 1
            if toks[i] == ("punct", ","):
                i += 1

    while i < len(toks):
        kind, tok = toks[i]
        if kind == "punct" and tok in "\n;":
            i += 1
            continue
        assert kind == "key", f"expected a key, got {tok!r}"
        assert toks[i + 1] == ("punct", "="), f"expected = after {tok}"
        assert tok not in out, f"{tok} given twice"
        out[tok], i = value(i + 2)
    return out


def parse_diskspec(spec: str) -> dict[str, str]:
    """xl-disk-configuration(5): comma-separated key=value pairs and positional parameters
    (target, format, vdev, access); ``target=`` consumes the rest of the spec."""
    out: dict[str, str] = {}
    positional = ["target", "format", "vdev", "access"]
    rest = spec
    while rest:
        part, sep, rest_after = rest.partition(",")
        part = part.lstrip()
        if part.startswith("target="):
            out["target"] = rest.lstrip()[len("target="):]
            break
        if "=" in part:
            k, _, v = part.partition("=")
            assert k not in out, f"{k} given twice in {spec!r}"
            out[k] = v
        elif part:
            key = next(p for p in positional if p not in out)
            out[key] = part
        rest = rest_after if sep else ""
    return out


def parse_vifspec(spec: str) -> dict[str, str]:
    """xl-network-configuration(5): comma-separated key=value pairs."""
    return dict(p.split("=", 1) for p in spec.split(",") if p)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def specs() -> list[Any]:
    return make_specs(RUN, 3, SUBNET, oui=XEN_OUI)


def _config(spec: Any, disk: str = "/var/lib/scalelab/xen/runs/r/g000.img") -> DomainConfig:
    return DomainConfig(
        name=domain_name(RUN, spec.name), guest=spec.name, run_id=RUN,
        kernel="/c/b1/vmlinuz", ramdisk="/c/b1/initrd.img",
        extra=guest_cmdline(spec), memory_mib=256, vcpus=1,
        disks=(disk_spec("xvda", "ro", "/c/b1/base.img"), disk_spec("xvdb", "rw", disk)),
        vifs=(vif_spec(spec.mac, "xenbr0"),),
    )


# -- the rendered config -----------------------------------------------------------------------


def test_config_fields(specs: list[Any]) -> None:
    spec = specs[1]
    cfg = parse_xl_cfg(render_config(_config(spec)))
    assert cfg["name"] == f"sl-{RUN}-g001"
    assert RUN in cfg["name"]
    assert cfg["type"] == "pv"
    assert cfg["kernel"] == "/c/b1/vmlinuz"
    assert cfg["ramdisk"] == "/c/b1/initrd.img"
    assert cfg["memory"] == 256 and cfg["maxmem"] == 256
    assert cfg["vcpus"] == 1
    assert cfg["on_poweroff"] == cfg["on_reboot"] == cfg["on_crash"] == "destroy"
    assert set(cfg) == {"name", "type", "kernel", "ramdisk", "extra", "memory", "maxmem",
                        "vcpus", "disk", "vif", "on_poweroff", "on_reboot", "on_crash"}


def test_config_disks(specs: list[Any]) -> None:
    cfg = parse_xl_cfg(render_config(_config(specs[0])))
    disks = [parse_diskspec(d) for d in cfg["disk"]]
    assert disks == [
        {"format": "raw", "vdev": "xvda", "access": "ro", "target": "/c/b1/base.img"},
        {"format": "raw", "vdev": "xvdb", "access": "rw",
         "target": "/var/lib/scalelab/xen/runs/r/g000.img"},
    ]
    # target= is last: a path with a comma in it is still one target
    odd = parse_diskspec(disk_spec("xvdb", "rw", "/srv/a,b/c.img"))
    assert odd["target"] == "/srv/a,b/c.img" and odd["access"] == "rw"


def test_config_vif(specs: list[Any]) -> None:
    for spec in specs:
        cfg = parse_xl_cfg(render_config(_config(spec)))
        (vif,) = cfg["vif"]
        fields = parse_vifspec(vif)
        assert fields == {"mac": spec.mac, "bridge": "xenbr0"}
        assert re.fullmatch(r"00:16:3e(:[0-9a-f]{2}){3}", fields["mac"])
    assert len({s.mac for s in specs}) == len(specs)


def test_config_extra_command_line(specs: list[Any]) -> None:
    spec = specs[2]
    cfg = parse_xl_cfg(render_config(_config(spec)))
    args = cfg["extra"].split()
    kv = dict(a.split("=", 1) for a in args if "=" in a)
    assert kv["root"] == "/dev/xvda" and "ro" in args
    assert kv["overlayroot"] == "disk:/dev/xvdb"
    assert kv["hostname"] == "g002"
    assert kv["console"] == "hvc0"
    assert kv["init"] == "/usr/lib/scalelab/init"
    # ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>, no gateway
    client, server, gw, mask, name, dev, auto = kv["ip"].split(":")
    assert (client, server, gw) == (spec.address, "", "")
    assert (mask, name, dev, auto) == ("255.255.255.0", "g002", "eth0", "off")
    systemd = guest_cmdline(spec, systemd=True, extra="quiet").split()
    assert "init=/lib/systemd/systemd" in systemd and systemd[-1] == "quiet"


def test_command_line_is_what_it_was(specs: list[Any]) -> None:
    """Written by the one shared ``harness.plumbing.cmdline.guest_cmdline`` now: the domU
    gets the same line, byte for byte, as from xlconfig's own copy before."""
    base = ("console=hvc0 root=/dev/xvda ro rootfstype=ext4 panic=-1 net.ifnames=0 "
            "hostname=g002 ip=10.213.9.4:::255.255.255.0:g002:eth0:off "
            "overlayroot=disk:/dev/xvdb ")
    assert guest_cmdline(specs[2]) == base + "init=/usr/lib/scalelab/init"
    assert guest_cmdline(specs[2], systemd=True, extra="quiet") == (
        base + "init=/lib/systemd/systemd systemd.show_status=false quiet")


def test_xl_string_refuses_what_xl_cannot_parse() -> None:
    assert xl_string("a b,c=d") == '"a b,c=d"'
    for bad in ('a"b', "a\\b", "a\nb", "a\x00b"):
        with pytest.raises(UserError):
            xl_string(bad)


def test_config_renders_through_xlstr(specs: list[Any]) -> None:
    cfg = _config(specs[0])
    bad = DomainConfig(**{**cfg.__dict__, "kernel": '/x/"vmlinuz'})
    with pytest.raises(UserError, match="xl config"):
        render_config(bad)


# -- options -------------------------------------------------------------------------------


def test_options_from_urls(tmp_path: Path) -> None:
    known = tmp_path / "kh"
    known.write_text("")
    be = load_backend(parse_backend(f"xen://root@dom0.lab:2222?known_hosts={known}&memory=512M"))
    assert isinstance(be, XenBackend)
    t = be.opts.target
    assert (t.local, t.host, t.port, t.user, t.known_hosts) == (
        False, "dom0.lab", 2222, "root", str(known))
    assert be.opts.memory_mib == 512 and be.opts.bridge == "xenbr0"
    assert be.mac_oui == XEN_OUI
    local = load_backend(parse_backend("xen://local"))
    assert isinstance(local, XenBackend) and local.opts.target.local


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("xen://", "needs a dom0"),
        ("xen://local?colour=red", "unknown xen option"),
        ("xen://local?memory=lots", "not a whole number"),
        ("xen://local?vcpus=0", "at least 1"),
        ("xen://local?bridge=a;b", "not a network interface"),
        ("xen://local?workdir=relative", "absolute path"),
        ("xen://local?init=upstart", "lean, systemd"),
        ("xen://h?known_hosts=/nonexistent/kh", "no such file"),
    ],
)
def test_bad_options_are_one_line(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        XenOptions.parse(load_options(url))
    assert "\n" not in str(err.value)


def load_options(url: str) -> dict[str, str]:
    u = parse_backend(url)
    opts = dict(u.options)
    for k in ("host", "user"):
        if getattr(u, k):
            opts[k] = getattr(u, k)
    if u.port:
        opts["port"] = str(u.port)
    return opts


def _image(tmp_path: Path, vm: bool) -> Image:
    d = tmp_path / "img"
    d.mkdir()
    (d / "base.img").write_bytes(b"")
    return Image("k1", d, {"digest": "sha256:0", "size": 0, "mtime": 0,
                           "recipe": {"vm": vm}})


def test_image_without_vm_parts(tmp_path: Path) -> None:
    be = XenBackend({"host": "local"})
    with pytest.raises(UserError, match=r"without VM parts.*--vm"):
        be.check(_image(tmp_path, vm=False), 2)


def test_local_without_xl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    img = _image(tmp_path, vm=True)
    for f in ("vmlinuz", "initrd.img"):
        (img.dir / f).write_bytes(b"x")
    be = XenBackend({"host": "local"})
    monkeypatch.setattr(Image, "check", lambda self: None)
    with pytest.raises(UserError, match="no `xl` on this host"):
        be.check(img, 1)


def answer(status: int, out: str = "", err: str = "") -> CommandResult:
    """What a dom0 command said (where and when do not matter to these tests)."""
    return CommandResult("", "", status, out, err, 0, 0)


class FakeDom0(Dom0):
    """A dom0 answering from a table: argv[0] → its CommandResult."""

    def __init__(self, answers: dict[str, CommandResult]) -> None:
        super().__init__(Target(local=True))
        self.answers = answers

    def run(self, argv: Any, *, timeout: float = 60.0,
            stdin: bytes | None = None) -> CommandResult:
        key = argv[0] if argv[0] != "sh" else "probe"
        return self.answers.get(key, answer(0))

    def put(self, local: Path, remote: str) -> None:
        raise AssertionError("no uploads here")

    def write_text(self, remote: str, text: str) -> None:
        raise AssertionError("no writes here")


def _probe(be: XenBackend, dom0: FakeDom0, n: int = 2) -> None:
    be.dom0 = dom0
    be.probe(n)


def test_remote_without_xl() -> None:
    be = XenBackend({"host": "local"})
    with pytest.raises(UserError, match="has no `xl`"):
        _probe(be, FakeDom0({"xl": answer(127, "", "sh: 1: xl: not found")}))


def test_xl_not_answering() -> None:
    be = XenBackend({"host": "local"})
    msg = "xencall: error: Could not obtain handle on privileged command interface"
    with pytest.raises(UserError, match="does not answer: xencall"):
        _probe(be, FakeDom0({"xl": answer(1, "", msg)}))


XL_INFO = "xen_major : 4\nxen_minor : 17\nfree_memory : 1000\nnr_cpus : 2\n"
GOOD_PROBE = ("bridge=yes\nbridge_up=up\nbridge_addrs=10.213.9.1/24\nloop_driver=yes\n"
              "loop_control=yes\nhas_mkdir=yes\nhas_rm=yes\nhas_losetup=yes\nhas_ip=yes\n")


def test_probe_says_what_is_missing() -> None:
    be = XenBackend({"host": "local", "memory": "256"})
    probe = ("bridge=no\nloop_driver=yes\nloop_free=1\nhas_mkdir=yes\nhas_rm=yes\n"
             "has_losetup=yes\nhas_ip=yes\n")
    with pytest.raises(UserError) as err:
        _probe(be, FakeDom0({"xl": answer(0, XL_INFO, ""), "probe": answer(0, probe, "")}), 8)
    text = str(err.value)
    assert "bridge xenbr0" in text and "does not exist" in text
    assert "1 free loop devices for 8 domUs that need 16" in text
    assert "Xen has 1000 MiB free; 8 domUs of 256 MiB need 2048" in text
    assert "\n" not in text


def test_probe_accepts_a_ready_dom0() -> None:
    be = XenBackend({"host": "local"})
    be.dom0 = FakeDom0({"xl": answer(0, XL_INFO, ""), "probe": answer(0, GOOD_PROBE, "")})
    facts = be.probe(2)
    assert facts.xen_version == "4.17" and facts.bridge_addresses == ["10.213.9.1/24"]


def test_xl_list_long_json() -> None:
    text = json.dumps([
        {"domid": 0, "config": {"c_info": {"name": "Domain-0"}}},
        {"domid": 7, "config": {"c_info": {"name": f"sl-{RUN}-g000"}, "b_info": {}}},
    ])
    assert parse_xl_list_long(text) == {"Domain-0": 0, f"sl-{RUN}-g000": 7}
    assert parse_xl_list_long("") == {}


# -- reaching dom0: pinned key, bounded time ---------------------------------------------------


def _ed25519() -> paramiko.PKey:
    return load_private_key(KeyPair.generate().private_openssh)


def _pinned(tmp_path: Path, port: int, key: paramiko.PKey) -> Path:
    """A known_hosts file pinning ``key`` for 127.0.0.1:port."""
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line("127.0.0.1", port, key) + "\n")
    return kh


def test_unpinned_dom0_is_refused_before_connecting(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    t = Target(local=False, host="127.0.0.1", port=1, known_hosts=str(kh))
    with pytest.raises(UserError, match=r"host key is not pinned.*record-host-key"):
        connect(t)


# How long giving up takes is measured in bench/bench_dom0_connect.py (a shared 2-core host
# makes wall-clock bounds flaky here); these tests check what is said.  The timeout marks
# only stop a hang from holding the suite for pytest's default 30 minutes.


@pytest.mark.timeout(120)
def test_unreachable_dom0_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = Target(local=False, host="127.0.0.1", port=port,
               known_hosts=str(_pinned(tmp_path, port, _ed25519())), connect_timeout=2)
    with pytest.raises(UserError, match="refused the connection: nothing listens on port") as err:
        connect(t)
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "\n" not in msg
    assert "[Errno None]" not in msg.split("[", 1)[0]  # the cause first, paramiko's words after
    assert f"Unable to connect to port {port}" in msg


@pytest.mark.timeout(120)
def test_silent_dom0_is_one_clear_error(tmp_path: Path) -> None:
    """A port that accepts and never says a word (a hung sshd): the banner wait gives up."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
    t = Target(local=False, host="127.0.0.1", port=port,
               known_hosts=str(_pinned(tmp_path, port, _ed25519())), connect_timeout=2)
    try:
        with pytest.raises(UserError, match="completed no SSH handshake within 2s") as err:
            connect(t)
        msg = str(err.value)
        assert f"dom0 root@127.0.0.1:{port} accepted the connection" in msg
        assert "\n" not in msg
        assert held, "the silent port never saw the connection"
    finally:
        srv.close()
        for c in held:
            c.close()


def test_loops_on_picks_the_files_asked_for() -> None:
    listing = ("/dev/loop0 /c/b1/base.img\n/dev/loop1 /var/lib/scalelab/xen/runs/r/g000.img\n"
               "/dev/loop2 /srv/other.img\n")
    dom0 = FakeDom0({"losetup": answer(0, listing, "")})
    assert xen.loops_on(dom0, ["/c/b1/base.img", "/var/lib/scalelab/xen/runs/r/g000.img"]) == [
        ("/dev/loop0", "/c/b1/base.img"),
        ("/dev/loop1", "/var/lib/scalelab/xen/runs/r/g000.img"),
    ]


def test_remove_path_refuses_short_paths() -> None:
    with pytest.raises(LabError, match="not a scalelab path"):
        xen.remove_path(Target(local=True).as_kwargs(), "/var/lib")


def test_error_message_quotes_xl() -> None:
    res = answer(1, "Parsing config from g000.cfg\n",
                 "libxl: error: a\nlibxl: error: b\nlibxl: error: c\nlibxl: error: d\ne\n")
    assert res.message() == "libxl: error: a | libxl: error: b | libxl: error: c"
    assert answer(1, "", "x\ny\n").message() == "x | y"
    assert answer(3, "", "").message() == "exit status 3"


# -- a domU that dies while booting; each domU announced as it is created ----------------------


class XlDom0(FakeDom0):
    """A dom0 whose ``xl`` knows domains: ``xl create`` adds one, ``xl list`` (counted) and
    ``xl list -l`` list them; config files are written under the test's directory."""

    def __init__(self) -> None:
        super().__init__({})
        self.domains: dict[str, int] = {}
        self.listings = 0
        self.list_fails = False

    def run(self, argv: Any, *, timeout: float = 60.0,
            stdin: bytes | None = None) -> CommandResult:
        if list(argv[:2]) == ["xl", "create"]:
            name = parse_xl_cfg(Path(argv[2]).read_text())["name"]
            self.domains[name] = len(self.domains) + 1
            return answer(0)
        if list(argv) == ["xl", "list"]:
            self.listings += 1
            if self.list_fails:
                return answer(1, "", "libxl: error: cannot get domain list")
            rows = "".join(f"{n} {i} 256 1 -b---- 0.1\n" for n, i in self.domains.items())
            return answer(0, "Name ID Mem VCPUs State Time(s)\n" + rows)
        if list(argv) == ["xl", "list", "-l"]:
            entries = [{"domid": i, "config": {"c_info": {"name": n}}}
                       for n, i in self.domains.items()]
            return answer(0, json.dumps(entries))
        return answer(0)

    def write_text(self, remote: str, text: str) -> None:
        Path(remote).write_text(text)


class Clock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _started_backend(tmp_path: Path, dom0: XlDom0,
                     monkeypatch: pytest.MonkeyPatch) -> tuple[XenBackend, list[Guest]]:
    """A local-dom0 backend as ``prepare`` leaves it, its domUs brought up on ``dom0``;
    returns it and the guests announced through ``on_started``, in order."""
    be = XenBackend({"host": "local", "workdir": str(tmp_path / "xen")})
    be.dom0 = dom0
    journal = tmp_path / "journal"
    journal.write_text("")
    announced: list[Guest] = []

    def on_started(guest: Guest) -> None:
        # Announced once created: xl knows the domain, and nothing is waited for before.
        assert guest.info["domain"] in dom0.domains
        announced.append(guest)

    ctx = RunContext(RUN, RunState(RUN, journal, {}, []), tmp_path / "run", "ssh-ed25519 K",
                     on_started=on_started)
    (tmp_path / "run" / "xen").mkdir(parents=True)
    run_dir = str(tmp_path / "xen" / "runs" / RUN)
    Path(run_dir).mkdir(parents=True)
    # What prepare() leaves: this run's context, dom0 and the bundle's paths there.
    be._run = XenRun(ctx, dom0, run_dir,
                     {n: f"/c/b1/{n}" for n in ("base.img", "vmlinuz", "initrd.img")})
    monkeypatch.setattr(xen_backend, "make_guest_disk",
                        lambda spec, key, path, size: path.write_bytes(b""))
    return be, announced


def test_each_domu_is_announced_as_it_is_created(
    tmp_path: Path, specs: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dom0 = XlDom0()
    be, announced = _started_backend(tmp_path, dom0, monkeypatch)
    guests = be.up(specs)
    assert sorted(g.name for g in announced) == [s.name for s in specs]
    by_name = {g.name: g for g in guests}
    for g in announced:  # the very guests up() returns, their domids filled in
        assert by_name[g.name] is g
        assert g.info["domid"] == dom0.domains[domain_name(RUN, g.name)]


def test_a_domu_that_left_xl_list_is_dead(
    tmp_path: Path, specs: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dom0 = XlDom0()
    be, _ = _started_backend(tmp_path, dom0, monkeypatch)
    g0, g1, _g2 = be.up(specs)
    clock = Clock(time.monotonic() + 1)  # the domUs were created before this clock's "now"
    be.watch = DomainWatch(dom0, interval=5.0, clock=clock)
    assert be.dead(g0) is None and be.dead(g1) is None
    assert dom0.listings == 1  # one listing for every guest asking within the interval
    del dom0.domains[domain_name(RUN, g0.name)]  # crashed: on_crash="destroy"
    clock.now += 1
    assert be.dead(g0) is None and dom0.listings == 1  # not asked again so soon
    clock.now += 5
    why = be.dead(g0)
    assert why is not None and domain_name(RUN, g0.name) in why and "gone from `xl list`" in why
    assert "\n" not in why
    assert be.dead(g1) is None and dom0.listings == 2
    other = make_specs(RUN, 4, SUBNET, oui=XEN_OUI)[3]
    # Not a domU of this backend: not its word to give.
    assert be.dead(Guest(other, other.address)) is None


def test_dead_is_unsure_without_a_fresh_listing() -> None:
    """A listing asked before the domU was created, or one dom0 could not give, says
    nothing about it: dead() must not fail a guest on either."""
    dom0 = XlDom0()
    clock = Clock()
    watch = DomainWatch(dom0, interval=5.0, clock=clock)
    created = clock.now + 0.5  # just after the first listing is asked for
    assert not watch.gone("sl-x-g000", since=created)
    clock.now += 1
    assert not watch.gone("sl-x-g000", since=created)  # that listing, still: too old to tell
    assert dom0.listings == 1
    clock.now += 10
    dom0.list_fails = True
    assert not watch.gone("sl-x-g000", since=created)
    assert dom0.listings == 2
    clock.now += 10
    dom0.list_fails = False
    assert watch.gone("sl-x-g000", since=created)
    assert dom0.listings == 3
