"""The qemu backend without a VM or root: option parsing and its one-line errors, the QEMU
command line built for a guest, the kernel command line, the accelerator choice, the
console watcher, the QMP exchange and the checks made before a lab."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.backends import load_backend, parse_backend
from harness.backends.qemu import (
    QemuBackend,
    QemuOptions,
    QmpError,
    VmNic,
    VmPaths,
    choose_accel,
    kernel_cmdline,
    qemu_argv,
    qmp,
)
from harness.backends.qemu import backend as qemu_backend
from harness.backends.qemu.console import BOOT_MARKER, ConsoleWatcher, Followed, find_boot
from harness.backends.qemu.hostfacts import parse_dumpe2fs_used
from harness.backends.qemu.vm import Vm
from harness.errors import UserError
from harness.identity import GuestSpec, make_specs
from harness.image.cache import Image
from harness.plumbing import links

RUN = "20260101-000000-abcdef"
SUBNET = ipaddress.IPv4Network("10.213.9.0/24")


@pytest.fixture(scope="module")
def spec() -> GuestSpec:
    return make_specs(RUN, 3, SUBNET)[1]


def paths(image_dir: str = "/c/im,g") -> VmPaths:
    d = Path(image_dir)
    return VmPaths(kernel=d / "vmlinuz", initrd=d / "initrd.img", image=d / "base.img",
                   disk=Path("/run/s/qemu/g001.img"),
                   console=Path("/r/guests/g001.console.log"), qmp=Path("/run/s/qemu/g001.qmp"))


def argv_for(spec: GuestSpec, options: dict[str, str] | None = None, accel: str = "tcg",
             nic: VmNic | None = None) -> list[str]:
    return qemu_argv(QemuOptions.parse(options or {}), spec, accel, paths(),
                     nic or VmNic("slt1234561"))


def flag(argv: list[str], name: str) -> list[str]:
    """Every value given to ``name`` (e.g. both ``-drive``), in order."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def refusal(options: dict[str, str]) -> str:
    with pytest.raises(UserError) as err:
        QemuOptions.parse(options)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- options -------------------------------------------------------------------------------


def test_defaults_are_the_old_ones() -> None:
    """The defaults ``qemu://`` always had (memory=256M, accel=auto, ..., tb_size=64)."""
    opts = QemuOptions.parse({})
    assert opts == QemuOptions()
    assert (opts.memory, opts.accel, opts.net, opts.init, opts.upper, opts.disk) == (
        "256M", "auto", "auto", "lean", "disk", "64M")
    assert (opts.smp, opts.cpu, opts.tb_size, opts.quiet, opts.append) == (1, "", 64, True, "")
    assert opts.memory_bytes() == 256 << 20 and opts.disk_bytes == 64 << 20
    assert QemuOptions.known() == {"memory", "accel", "net", "init", "upper", "disk", "smp",
                                   "cpu", "tb_size", "quiet", "append", "addressing"}
    assert opts.addressing == "static"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("memory", "1G", "1G"),
        ("accel", "tcg", "tcg"),
        ("accel", "kvm", "kvm"),
        ("net", "user", "user"),
        ("net", "tap", "tap"),
        ("init", "systemd", "systemd"),
        ("upper", "tmpfs", "tmpfs"),
        ("disk", "128M", "128M"),
        ("smp", "4", 4),
        ("smp", "", 1),
        ("cpu", "qemu64", "qemu64"),
        ("tb_size", "256", 256),
        ("tb_size", "", None),  # empty: QEMU's own default
        ("quiet", "0", False),
        ("quiet", "1", True),
        ("append", "loglevel=7 x=y", "loglevel=7 x=y"),
    ],
)
def test_each_option(key: str, value: str, expected: object) -> None:
    opts = QemuOptions.parse({key: value})
    assert getattr(opts, key) == expected
    # Nothing else moved.
    assert replace(opts, **{key: getattr(QemuOptions(), key)}) == QemuOptions()


def test_options_from_the_url() -> None:
    be = load_backend(parse_backend("qemu://?memory=512M&accel=tcg&net=user&smp=2"))
    assert isinstance(be, QemuBackend)
    assert be.opts == QemuOptions(memory="512M", accel="tcg", net="user", smp=2)
    assert be.requires_root is False  # user networking needs no taps
    assert QemuBackend({}).requires_root is True


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        ({"memroy": "256M"}, ("'memroy' is unknown", "accel, addressing, append, cpu, disk")),
        ({"addressing": "bootp"}, ("addressing='bootp'", "static", "dhcp")),
        ({"addressing": "dhcp", "net": "user"}, ("addressing=dhcp", "net=tap")),
        ({"colour": "red", "size": "1"}, ("'colour', 'size' are unknown", "tb_size, upper")),
        ({"accel": "xen"}, ("accel='xen'", "accel=auto or accel=kvm or accel=tcg")),
        ({"net": "bridge"}, ("net='bridge'", "net=user")),
        ({"init": "upstart"}, ("init=lean or init=systemd",)),
        ({"upper": "ram"}, ("upper=disk or upper=tmpfs",)),
        ({"quiet": "yes"}, ("quiet=1 or quiet=0",)),
        ({"accel": ""}, ("accel=''",)),
        ({"memory": "lots"}, ("memory", "'lots'", "256M")),
        ({"disk": "big"}, ("disk", "'big'", "256M")),
        ({"disk": "1M"}, ("disk=1M", "at least 4M")),
        ({"smp": "0"}, ("smp='0'", "positive number")),
        ({"smp": "two"}, ("smp='two'", "positive number")),
        ({"tb_size": "-1"}, ("tb_size='-1'", "positive number")),
        ({"cpu": "qemu64 -device x"}, ("cpu=", "one CPU model name")),
    ],
)
def test_bad_options_are_one_clear_line(options: dict[str, str], needles: tuple[str, ...]
                                        ) -> None:
    msg = refusal(options)
    assert msg.startswith(("qemu option", "unknown")), msg
    for n in needles:
        assert n in msg, msg


def test_bad_option_refused_when_the_backend_is_made() -> None:
    """Parsed once, at the edge: a bad URL fails before any image or host is looked at."""
    with pytest.raises(UserError, match="accel=auto or accel=kvm"):
        load_backend(parse_backend("qemu://?accel=fast"))


def test_memory_and_overhead() -> None:
    opts = QemuOptions.parse({"memory": "512M"})
    assert opts.memory_bytes() == 512 << 20
    assert opts.memory_bytes("128M") == 128 << 20  # the lab's --guest-memory wins
    assert opts.overhead_bytes("kvm") == 64 << 20  # no translation cache under KVM
    assert opts.overhead_bytes("tcg") == (64 + 64) << 20
    assert opts.overhead_bytes("") == (64 + 64) << 20  # before the choice: assume TCG
    assert QemuOptions.parse({"tb_size": ""}).overhead_bytes("tcg") == (64 + 1024) << 20


# -- the QEMU command line -------------------------------------------------------------------

#: What the qemu backend ran before it became a package (taken from the old ``_argv``):
#: the same options and guest must still give these, byte for byte.
OLD_ARGV_DEFAULT_TAP = [
    "qemu-system-x86_64", "-name", "g001,process=scalelab-g001", "-accel", "tcg,tb-size=64",
    "-machine", "pc", "-m", "256", "-smp", "1", "-nodefaults", "-nographic", "-no-reboot",
    "-kernel", "/c/im,g/vmlinuz", "-initrd", "/c/im,g/initrd.img",
    "-append", "console=ttyS0 root=/dev/vda ro rootfstype=ext4 panic=-1 edd=off "
    "net.ifnames=0 hostname=g001 ip=10.213.9.3:::255.255.255.0:g001:eth0:off "
    "overlayroot=disk:/dev/vdb init=/usr/lib/scalelab/init quiet",
    "-drive", "file=/c/im,,g/base.img,format=raw,if=virtio,readonly=on,id=image",
    "-drive", "file=/run/s/qemu/g001.img,format=raw,if=virtio,cache=unsafe,id=upper",
    "-netdev", "tap,id=net0,ifname=slt1234561,script=no,downscript=no",
    "-device", "virtio-net-pci,netdev=net0,mac=02:c4:bc:00:00:01,romfile=",
    "-device", "virtio-rng-pci", "-serial", "file:/r/guests/g001.console.log",
    "-qmp", "unix:/run/s/qemu/g001.qmp,server=on,wait=off",
]
OLD_ARGV_SYSTEMD_KVM_USER = [
    "qemu-system-x86_64", "-name", "g001,process=scalelab-g001", "-accel", "kvm",
    "-cpu", "host", "-machine", "pc", "-m", "256", "-smp", "1", "-nodefaults", "-nographic",
    "-no-reboot", "-kernel", "/c/im,g/vmlinuz", "-initrd", "/c/im,g/initrd.img",
    "-append", "console=ttyS0 root=/dev/vda ro rootfstype=ext4 panic=-1 edd=off "
    "net.ifnames=0 hostname=g001 ip=10.213.9.3:::255.255.255.0:g001:eth0:off "
    "overlayroot=tmpfs overlayroot_seed=/dev/vdb init=/lib/systemd/systemd "
    "systemd.show_status=false loglevel=7 x=y",
    "-drive", "file=/c/im,,g/base.img,format=raw,if=virtio,readonly=on,id=image",
    "-drive", "file=/run/s/qemu/g001.img,format=raw,if=virtio,cache=unsafe,id=upper",
    "-netdev", "user,id=net0,net=10.213.9.0/24,host=10.213.9.1,dns=10.213.9.254,restrict=on,"
    "hostfwd=tcp:127.0.0.1:40123-10.213.9.3:22",
    "-device", "virtio-net-pci,netdev=net0,mac=02:c4:bc:00:00:01,romfile=",
    "-device", "virtio-rng-pci", "-serial", "file:/r/guests/g001.console.log",
    "-qmp", "unix:/run/s/qemu/g001.qmp,server=on,wait=off",
]


def test_argv_is_what_it_was(spec: GuestSpec) -> None:
    assert argv_for(spec) == OLD_ARGV_DEFAULT_TAP
    odd = {"init": "systemd", "upper": "tmpfs", "quiet": "0", "append": "loglevel=7 x=y"}
    assert argv_for(spec, odd, "kvm", VmNic(None, 40123)) == OLD_ARGV_SYSTEMD_KVM_USER


def test_argv_accelerator(spec: GuestSpec) -> None:
    tcg = argv_for(spec, {"cpu": "qemu64", "tb_size": "128"})
    assert flag(tcg, "-machine") == ["pc"]
    assert flag(tcg, "-accel") == ["tcg,tb-size=128"] and flag(tcg, "-cpu") == ["qemu64"]
    assert flag(argv_for(spec, {"tb_size": ""}), "-accel") == ["tcg"]  # QEMU's default cache
    assert flag(argv_for(spec), "-cpu") == []  # TCG's default model
    # KVM runs the host's CPU whatever cpu= says (cpu= is the TCG model).
    kvm = argv_for(spec, {"cpu": "qemu64"}, accel="kvm")
    assert flag(kvm, "-accel") == ["kvm"] and flag(kvm, "-cpu") == ["host"]


def test_argv_memory_and_cpus(spec: GuestSpec) -> None:
    assert flag(argv_for(spec, {"memory": "1G", "smp": "2"}), "-m") == ["1024"]
    assert flag(argv_for(spec, {"smp": "2"}), "-smp") == ["2"]
    assert flag(argv_for(replace(spec, memory="384M")), "-m") == ["384"]  # --guest-memory
    assert flag(argv_for(spec, {"memory": "16M"}), "-m") == ["64"]  # QEMU's floor


def test_argv_drives_base_read_only_disk_writable(spec: GuestSpec) -> None:
    base, own = flag(argv_for(spec), "-drive")
    b = dict(kv.split("=", 1) for kv in base.replace(",,", "\0").split(","))
    o = dict(kv.split("=", 1) for kv in own.replace(",,", "\0").split(","))
    assert b["file"].replace("\0", ",") == "/c/im,g/base.img"  # a comma doubled, not split
    assert b["readonly"] == "on" and b["if"] == "virtio" and b["format"] == "raw"
    assert o["file"] == "/run/s/qemu/g001.img" and "readonly" not in o
    assert o["cache"] == "unsafe" and o["if"] == "virtio"


def test_argv_network(spec: GuestSpec) -> None:
    tap = argv_for(spec, nic=VmNic("slt99"))
    assert flag(tap, "-netdev") == ["tap,id=net0,ifname=slt99,script=no,downscript=no"]
    assert flag(tap, "-device")[0] == f"virtio-net-pci,netdev=net0,mac={spec.mac},romfile="
    (user,) = flag(argv_for(spec, nic=VmNic(None, 2222)), "-netdev")
    fields = dict(kv.split("=", 1) for kv in user.split(",")[1:])
    assert user.startswith("user,") and fields["restrict"] == "on"
    assert fields["net"] == str(SUBNET) and fields["host"] == str(spec.gateway)
    assert fields["hostfwd"] == f"tcp:127.0.0.1:2222-{spec.address}:22"
    assert fields["dns"] not in (spec.address, str(spec.gateway))
    # The DNS address steps aside when the guest itself sits on it.
    last = replace(spec, ip=ipaddress.IPv4Interface("10.213.9.254/24"))
    (user,) = flag(argv_for(last, nic=VmNic(None, 2222)), "-netdev")
    assert "dns=10.213.9.253," in user


def test_argv_kernel_initrd_append(spec: GuestSpec) -> None:
    argv = argv_for(spec, {"append": "loglevel=7"})
    assert flag(argv, "-kernel") == ["/c/im,g/vmlinuz"]
    assert flag(argv, "-initrd") == ["/c/im,g/initrd.img"]
    (append,) = flag(argv, "-append")
    assert append == kernel_cmdline(QemuOptions.parse({"append": "loglevel=7"}), spec)
    assert append.split()[-1] == "loglevel=7"  # a person's additions come last
    assert flag(argv, "-serial") == ["file:/r/guests/g001.console.log"]
    assert flag(argv, "-qmp") == ["unix:/run/s/qemu/g001.qmp,server=on,wait=off"]


# -- the kernel command line -----------------------------------------------------------------


def test_kernel_cmdline_is_what_it_was(spec: GuestSpec) -> None:
    assert kernel_cmdline(QemuOptions(), spec) == (
        "console=ttyS0 root=/dev/vda ro rootfstype=ext4 panic=-1 edd=off net.ifnames=0 "
        "hostname=g001 ip=10.213.9.3:::255.255.255.0:g001:eth0:off "
        "overlayroot=disk:/dev/vdb init=/usr/lib/scalelab/init quiet")
    odd = QemuOptions.parse({"init": "systemd", "upper": "tmpfs", "quiet": "0",
                             "append": "loglevel=7 x=y"})
    assert kernel_cmdline(odd, spec) == (
        "console=ttyS0 root=/dev/vda ro rootfstype=ext4 panic=-1 edd=off net.ifnames=0 "
        "hostname=g001 ip=10.213.9.3:::255.255.255.0:g001:eth0:off "
        "overlayroot=tmpfs overlayroot_seed=/dev/vdb init=/lib/systemd/systemd "
        "systemd.show_status=false loglevel=7 x=y")


def test_kernel_cmdline_fields(spec: GuestSpec) -> None:
    args = kernel_cmdline(QemuOptions.parse({"quiet": "0"}), spec).split()
    kv = dict(a.split("=", 1) for a in args if "=" in a)
    assert kv["root"] == "/dev/vda" and "ro" in args and kv["console"] == "ttyS0"
    assert kv["hostname"] == spec.name and kv["overlayroot"] == "disk:/dev/vdb"
    client, server, gw, mask, name, dev, auto = kv["ip"].split(":")
    assert (client, server, gw) == (spec.address, "", "")  # no gateway: no way out
    assert (mask, name, dev, auto) == ("255.255.255.0", spec.name, "eth0", "off")
    assert "quiet" not in args


# -- the accelerator -----------------------------------------------------------------------


def test_choose_accel_without_booting_anything() -> None:
    kernel = Path("/nonexistent/vmlinuz")

    def never(k: Path) -> tuple[bool, str]:
        raise AssertionError("accel=tcg must not try KVM")

    def works(k: Path) -> tuple[bool, str]:
        return True, "a KVM test VM booted"

    def fails(k: Path) -> tuple[bool, str]:
        return False, "a KVM test VM did not boot within 6s"

    assert choose_accel("tcg", kernel, never) == ("tcg", "asked for (accel=tcg)")
    assert choose_accel("auto", kernel, works) == ("kvm", "a KVM test VM booted")
    assert choose_accel("kvm", kernel, works)[0] == "kvm"
    accel, why = choose_accel("auto", kernel, fails)
    assert accel == "tcg" and why.startswith("KVM not usable: ")
    with pytest.raises(UserError, match=r"accel=kvm: a KVM test VM did not boot.*accel=tcg"):
        choose_accel("kvm", kernel, fails)


# -- the console watcher -------------------------------------------------------------------


def test_find_boot() -> None:
    line = BOOT_MARKER + b" uptime=3.25\n"
    assert find_boot(b"[    1.0] noise\n" + line) == (True, 3.25)
    assert find_boot(BOOT_MARKER + b" uptime=3.2") == (False, None)  # line not finished
    assert find_boot(BOOT_MARKER + b"\n") == (True, None)
    assert find_boot(b"nothing yet\n") == (False, None)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for a QEMU process (the watcher only asks whether it still runs)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc
    proc.kill()
    proc.wait()


def test_console_watcher_reports_booted(tmp_path: Path, spec: GuestSpec,
                                        child: subprocess.Popen[bytes]) -> None:
    console = tmp_path / "g001.console.log"
    console.write_bytes(b"SeaBIOS\n" + BOOT_MARKER[:10])  # the marker split across writes
    phases: list[tuple[str, str, int, int]] = []
    w = ConsoleWatcher(lambda *a: phases.append(a), tmp_path)
    vm = Vm(spec, child, console, tmp_path / "q", tmp_path / "d", None, started_ns=1)
    f = Followed(vm)
    w.poll(f)
    assert f.pending and not phases
    with console.open("ab") as out:
        out.write(BOOT_MARKER[10:] + b" uptime=2.50\nlogin:")
    w.poll(f)
    assert not f.pending and f.boot_uptime == 2.5
    assert phases == [(spec.name, "booted", 1, f.booted_ns)]


def test_console_watcher_thread_and_exit_note(tmp_path: Path, spec: GuestSpec) -> None:
    """The thread notes a QEMU that exited before its guest booted, then stops by itself."""
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    w = ConsoleWatcher(lambda *a: None, tmp_path)
    with w.spawning():
        w.add(Vm(spec, proc, tmp_path / "none.log", tmp_path / "q", tmp_path / "d", None, 0))
    deadline = time.monotonic() + 10
    note = tmp_path / f"{spec.name}.qemu.log"
    while not note.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "qemu exited with status 3 before the guest booted" in note.read_text()
    w.stop()
    assert w.boot_uptime(spec.name) is None


# -- QMP -----------------------------------------------------------------------------------


@pytest.fixture
def qmp_server(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """A QMP peer on a unix socket: greeting, an event before each answer, one error."""
    path = tmp_path / "vm.qmp"
    seen: list[dict[str, Any]] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
                f.flush()
                for line in f:
                    req = json.loads(line)
                    seen.append(req)
                    f.write(b'{"event": "NIC_RX_FILTER_CHANGED", "data": {}}\n')
                    if req["execute"] == "bad":
                        f.write(b'{"error": {"class": "GenericError", "desc": "no such"}}\n')
                    else:
                        f.write(json.dumps({"return": {"status": "running"}}).encode() + b"\n")
                    f.flush()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, seen
    srv.close()


def test_qmp_exchange(qmp_server: tuple[Path, list[dict[str, Any]]]) -> None:
    path, seen = qmp_server
    assert qmp(path, "query-status") == {"status": "running"}
    qmp(path, "set_link", name="net0", up=False)
    assert seen[0] == {"execute": "qmp_capabilities"}
    assert seen[1] == {"execute": "query-status"}
    assert seen[3] == {"execute": "set_link", "arguments": {"name": "net0", "up": False}}
    with pytest.raises(QmpError, match="QMP bad: no such"):
        qmp(path, "bad")


def test_qmp_without_qemu(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match=r"QMP gone\.qmp"):
        qmp(tmp_path / "gone.qmp", "quit", timeout=0.5)


# -- checks before a lab -------------------------------------------------------------------


def fake_vm_image(tmp_path: Path, vm: bool = True) -> Image:
    d = tmp_path / "img"
    d.mkdir(parents=True)
    for f in ("base.img", "vmlinuz", "initrd.img"):
        (d / f).write_bytes(b"x")
    return Image("k1", d, {"digest": "sha256:0", "size": 1, "recipe": {"vm": vm}})


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Tools on PATH (as empty scripts), an image that checks out, 4 GiB available."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-system-x86_64", "mkfs.ext4"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        os.chmod(bin_dir / tool, 0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(Image, "check", lambda self: None)
    monkeypatch.setattr(qemu_backend, "mem_available", lambda: 4 << 30)
    monkeypatch.setattr(links, "tap_possible", lambda: "")
    return bin_dir


def check_refusal(options: dict[str, str], image: Image, n: int = 2) -> str:
    with pytest.raises(UserError) as err:
        QemuBackend(options).check(image, n)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_check_passes_on_a_good_host(host: Path, tmp_path: Path) -> None:
    QemuBackend({"accel": "tcg"}).check(fake_vm_image(tmp_path), 2)


def test_check_refuses_missing_tools(host: Path, tmp_path: Path) -> None:
    (host / "mkfs.ext4").unlink()
    assert "apt-get install e2fsprogs" in check_refusal({}, fake_vm_image(tmp_path))
    (host / "qemu-system-x86_64").unlink()
    assert "apt-get install qemu-system-x86" in check_refusal({}, fake_vm_image(tmp_path / "b"))


def test_check_refuses_an_image_without_vm_parts(host: Path, tmp_path: Path) -> None:
    assert "--vm" in check_refusal({}, fake_vm_image(tmp_path, vm=False))


def test_check_refuses_systemd_on_a_lean_image(host: Path, tmp_path: Path) -> None:
    assert "--force" in check_refusal({"init": "systemd"}, fake_vm_image(tmp_path))


def test_check_refuses_what_memory_cannot_hold(host: Path, tmp_path: Path) -> None:
    # 16 x (1G + 64M QEMU + 64M translation cache) > 4 GiB
    msg = check_refusal({"memory": "1G"}, fake_vm_image(tmp_path), 16)
    assert "16 VMs of 1G (+128M for QEMU each) need 18432 MiB" in msg
    assert "smaller memory=" in msg


def test_check_refuses_tap_where_taps_are_impossible(host: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(links, "tap_possible", lambda: "not root")
    assert check_refusal({"net": "tap"}, fake_vm_image(tmp_path)) == (
        "qemu option net=tap: not root; use net=user")
    QemuBackend({"net": "auto"}).check(fake_vm_image(tmp_path / "b"), 2)  # auto falls back


# -- host facts ------------------------------------------------------------------------------

DUMPE2FS = """\
Block count:              65536
Block size:               1024
Group 0: (Blocks 1-8192)
  7000 free blocks, 2000 free inodes, 2 directories
Group 1: (Blocks 8193-16384)
  8192 free blocks, 2048 free inodes, 0 directories
"""


def test_dumpe2fs_used_bytes() -> None:
    assert parse_dumpe2fs_used(DUMPE2FS) == (65536 - 7000 - 8192) * 1024
    assert parse_dumpe2fs_used("garbage") is None


def test_kvm_probe_says_why_it_failed() -> None:
    from harness.backends.qemu.accel import probe_failure

    assert probe_failure(0, "", "").startswith(
        "the KVM test VM reset before its kernel printed a line (exit status 0): this KVM "
        "does not run a stock kernel")
    assert probe_failure(1, "qemu: warning: x\nqemu: error: MSR 0x1 not supported\n", "") == (
        "KVM test VM failed: qemu: error: MSR 0x1 not supported")
    assert probe_failure(0, "", "Linux version 6.1\nsmpboot: CPU0\n") == (
        "KVM test VM stopped with exit status 0 before its kernel panic; its console's last "
        "line: smpboot: CPU0")
