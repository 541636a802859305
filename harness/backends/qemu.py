"""The qemu backend: every guest is a QEMU virtual machine booting the shared image.

Per run: the accelerator is chosen (``accel=auto`` boots a throw-away KVM VM to see whether
KVM really runs guests here, else TCG), and a bridge carries the lab subnet (or, when taps
are impossible, each VM gets user networking with one forwarded loopback port).
Per guest: a small ext4 disk made on the host from the guest's identity tree
(``mkfs.ext4 -d``, so the host key is pinned before boot), a tap on the bridge, and one
``qemu-system-x86_64`` with the image's kernel and initramfs, the base image attached
read-only (``/dev/vda``), its own disk (``/dev/vdb``) as the overlay's upper layer, a serial
console written to ``<run>/guests/<name>.console.log`` and a QMP socket for shutdown and
faults.  A thread follows the consoles and reports ``booted`` when the guest's init prints
its marker, so ``up()`` returns as soon as every VM is spawned.

    qemu://?memory=256M&accel=auto&net=auto&init=lean

Options: ``memory`` guest RAM (the lab's --guest-memory wins); ``accel`` auto|kvm|tcg;
``net`` auto|tap|user (auto: tap unless impossible); ``init`` lean|systemd; ``upper``
disk|tmpfs (where the overlay's writable layer lives); ``disk`` size of the writable disk;
``smp`` vCPUs; ``cpu`` TCG CPU model; ``tb_size`` TCG translation cache (MiB); ``quiet``
1|0 (kernel messages on the console); ``append`` more kernel command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends import labnet
from harness.backends.base import Backend, FaultNotSupported, Guest, RunContext, now_ns
from harness.errors import LabError, UserError
from harness.guestfiles import make_guest_disk
from harness.identity import GuestSpec, run_tag
from harness.image.cache import Image, cache_dir
from harness.image.vm import GUEST_INIT, vm_info
from harness.plumbing.units import parse_size
from harness.state import proc_start_time, teardown

QEMU = "qemu-system-x86_64"
#: What the guest's init prints first (lean init, or the systemd unit): "booted".
BOOT_MARKER = b"scalelab-init: userspace"
#: Host memory a VM costs beyond its guest RAM and TCG's translation cache (QEMU itself,
#: its devices), used only to refuse labs that cannot fit.
QEMU_OVERHEAD = 64 << 20
DEFAULTS = {
    "memory": "256M",
    "accel": "auto",
    "net": "auto",
    "init": "lean",
    "upper": "disk",
    "disk": "64M",
    "smp": "1",
    "cpu": "",
    "quiet": "1",
    "append": "",
    # TCG's translation cache in MiB.  QEMU's default is 1 GiB, and with transparent huge
    # pages a boot leaves ~250 MiB of it resident per VM; 64 MiB holds a guest's hot code.
    "tb_size": "64",
}
CHOICES = {
    "accel": ("auto", "kvm", "tcg"),
    "net": ("auto", "tap", "user"),
    "init": ("lean", "systemd"),
    "upper": ("disk", "tmpfs"),
    "quiet": ("0", "1"),
}
#: The result of the KVM test, kept for this boot of the host (a hanging test VM costs its
#: whole timeout; once per boot is enough).
ACCEL_CACHE_FILE = "qemu-accel.json"
KVM_PROBE_TIMEOUT = 6.0


# -- helpers --------------------------------------------------------------------------------


def _opt_path(path: Path | str) -> str:
    """A path inside a QEMU ``key=value,...`` option: commas are doubled."""
    return str(path).replace(",", ",,")


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def mem_available() -> int:
    """The host's MemAvailable in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"version (\S+)", out.stdout)
    return m.group(1) if m else "unknown"


def ext4_used_bytes(image: Path) -> int | None:
    """Bytes of allocated blocks in an ext4 image, from its group descriptors (the per-group
    free counts are written back with the bitmaps; the superblock's total may lag)."""
    out = subprocess.run(["dumpe2fs", str(image)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    head = dict(re.findall(r"^(Block count|Block size):\s+(\d+)$", out.stdout, re.M))
    free = sum(int(n) for n in re.findall(r"^\s+(\d+) free blocks,", out.stdout, re.M))
    try:
        return (int(head["Block count"]) - free) * int(head["Block size"])
    except KeyError:
        return None


def _free_port(taken: set[int]) -> int:
    """A loopback TCP port nobody listens on now (QEMU binds it a moment later), and not
    one already handed to another VM of this run that has not bound it yet."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


# -- QMP ------------------------------------------------------------------------------------


class QmpError(LabError):
    """A QMP command failed or QEMU did not answer."""


def qmp(path: Path, command: str, timeout: float = 5.0, **arguments: Any) -> Any:
    """Run one QMP command on the unix socket ``path`` and return its ``return`` value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise QmpError(f"QMP {path.name}: {exc}") from None
        f = sock.makefile("rwb")

        def reply() -> dict[str, Any]:
            while True:  # events ({"event": ...}) may come before the answer
                line = f.readline()
                if not line:
                    raise QmpError(f"QMP {path.name}: QEMU closed the connection")
                msg = json.loads(line)
                if "QMP" in msg or "return" in msg or "error" in msg:
                    return dict(msg)

        def send(cmd: str, args: dict[str, Any] | None = None) -> Any:
            req: dict[str, Any] = {"execute": cmd}
            if args:
                req["arguments"] = args
            f.write(json.dumps(req).encode() + b"\n")
            f.flush()
            msg = reply()
            if "error" in msg:
                raise QmpError(f"QMP {cmd}: {msg['error'].get('desc', msg['error'])}")
            return msg.get("return")

        try:
            reply()  # the greeting
            send("qmp_capabilities")
            return send(command, arguments or None)
        except (OSError, ValueError) as exc:
            raise QmpError(f"QMP {command} on {path.name}: {exc}") from None


# -- the accelerator ------------------------------------------------------------------------

#: A kernel command line on which the kernel panics at once (no root, no init) and, with
#: -no-reboot, QEMU exits: the whole boot of a kernel, in well under a second on real KVM.
_PROBE_APPEND = "console=ttyS0 panic=-1 root=/dev/scalelab-probe rdinit=/scalelab-probe"


def kvm_args() -> list[str]:
    return ["-accel", "kvm", "-cpu", "host"]


def probe_kvm(kernel: Path, timeout: float = KVM_PROBE_TIMEOUT) -> tuple[bool, str]:
    """Does a KVM guest actually run here?  Boot ``kernel`` to a deliberate panic.

    ``/dev/kvm`` existing proves nothing: under nested virtualisation QEMU may fail on MSRs
    or hang with the guest never printing a line.  Only a kernel that gets to its panic
    message within ``timeout`` counts.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    with tempfile.TemporaryDirectory(prefix="scalelab-kvm-") as tmp:
        console = Path(tmp) / "console"
        argv = [
            QEMU, *kvm_args(), "-machine", "pc", "-m", "64", "-smp", "1",
            "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{console}", "-kernel", str(kernel), "-append", _PROBE_APPEND,
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return False, f"a KVM test VM did not boot within {timeout:.0f}s"
        text = console.read_text(errors="replace") if console.exists() else ""
    if "Kernel panic" in text:
        return True, "a KVM test VM booted"
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    return False, f"KVM test VM failed: {last}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def kvm_works(kernel: Path) -> tuple[bool, str]:
    """``probe_kvm``, remembered for this boot of the host, this QEMU and this kernel."""
    key = f"{_boot_id()}|{shutil.which(QEMU)}|{qemu_version()}|{kernel.resolve()}"
    cache_file = cache_dir() / ACCEL_CACHE_FILE
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return bool(cached["kvm"]), str(cached["reason"]) + " (cached)"
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    ok, reason = probe_kvm(kernel)
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "kvm": ok, "reason": reason}))
        tmp.replace(cache_file)
    return ok, reason


# -- the backend ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Vm:
    """One running VM and what the console follower knows about it."""

    spec: GuestSpec
    proc: subprocess.Popen[bytes]
    console: Path
    qmp: Path
    disk: Path
    tap: str | None
    started_ns: int
    booted_ns: int | None = None
    boot_uptime: float | None = None
    exit_noted: bool = False
    offset: int = 0
    tail: bytes = field(default=b"", repr=False)


class QemuBackend(Backend):
    name = "qemu"
    faults = frozenset({"kill", "pause", "isolate", "partition"})

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.ctx: RunContext | None = None
        self.image: Image | None = None
        self.opts = {**DEFAULTS, **self.options}
        # Taps and the bridge need root; user networking does not.
        self.requires_root = self.opts["net"] != "user"
        self.accel = ""
        self.accel_reason = ""
        self.net = ""
        self.net_reason = ""
        self._vms: dict[str, _Vm] = {}
        self._resources: list[Any] = []
        self._isolated: set[str] = set()
        self._partitioned = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._spawning = False
        self._ports: set[int] = set()
        self._dir: Path | None = None

    # -- options -----------------------------------------------------------------------------

    def _validate(self) -> None:
        unknown = sorted(set(self.options) - set(DEFAULTS))
        if unknown:
            raise UserError(
                f"qemu option {unknown[0]!r} is unknown: use {', '.join(sorted(DEFAULTS))}"
            )
        for key, allowed in CHOICES.items():
            if self.opts[key] not in allowed:
                raise UserError(f"qemu option {key}={self.opts[key]!r}: use "
                                + " or ".join(f"{key}={a}" for a in allowed))
        for key in ("memory", "disk"):
            parse_size(self.opts[key])  # raises a UserError naming the bad size
        if parse_size(self.opts["disk"]) < (4 << 20):
            raise UserError(f"qemu option disk={self.opts['disk']}: the writable disk needs "
                            "at least 4M")
        for key in ("smp", "tb_size"):
            if self.opts[key] and not (self.opts[key].isdigit() and int(self.opts[key]) > 0):
                raise UserError(f"qemu option {key}={self.opts[key]!r}: use a positive number")
        if any(c.isspace() for c in self.opts["cpu"]):
            raise UserError(f"qemu option cpu={self.opts['cpu']!r}: one CPU model name")

    def memory_bytes(self, spec: GuestSpec | None = None) -> int:
        """Guest RAM: the lab's per-guest memory if set, else ``memory=``."""
        return parse_size((spec.memory if spec and spec.memory else None)
                           or self.opts["memory"])

    def overhead_bytes(self) -> int:
        """What QEMU itself may keep resident beside the guest's RAM."""
        tb = int(self.opts["tb_size"] or 1024) << 20 if self.accel != "kvm" else 0
        return QEMU_OVERHEAD + tb

    # -- lifecycle -----------------------------------------------------------------------

    def check(self, image: Image, n_guests: int) -> None:
        self._validate()
        if shutil.which(QEMU) is None:
            raise UserError(f"the qemu backend needs {QEMU}: apt-get install qemu-system-x86")
        if shutil.which("mkfs.ext4") is None:
            raise UserError("the qemu backend needs mkfs.ext4: apt-get install e2fsprogs")
        image.check()
        if not image.vm or not image.kernel.is_file() or not image.initrd.is_file():
            raise UserError(
                f"image {image.key} has no kernel and initramfs (built without the VM parts): "
                "build one with `scalelab image build --vm`"
            )
        if self.opts["init"] == "systemd" and not vm_info(image.dir).get("systemd"):
            raise UserError(
                f"qemu option init=systemd: image {image.key} has no systemd; rebuild it with "
                "`scalelab image build --vm --force`"
            )
        overhead = self.overhead_bytes()
        need = n_guests * (self.memory_bytes() + overhead)
        avail = mem_available()
        if need > avail:
            raise UserError(
                f"{n_guests} VMs of {self.opts['memory']} (+{overhead >> 20}M for QEMU "
                f"each) need {need >> 20} MiB, the host has {avail >> 20} MiB available: "
                "use fewer guests or a smaller memory="
            )
        why_not = labnet.tap_possible()
        if self.opts["net"] == "tap" and why_not:
            raise UserError(f"qemu option net=tap: {why_not}; use net=user")
        if self.opts["accel"] == "kvm":
            ok, reason = kvm_works(image.kernel)
            if not ok:
                raise UserError(f"qemu option accel=kvm: {reason}; use accel=tcg or accel=auto")

    def _record(self, kind: str, **attrs: Any) -> None:
        assert self.ctx is not None
        self._resources.append(self.ctx.state.record(kind, **attrs))

    @property
    def tag(self) -> str:
        assert self.ctx is not None
        return run_tag(self.ctx.run_id)

    @property
    def bridge(self) -> str:
        return labnet.bridge_name(self.tag)

    def _choose_accel(self, image: Image) -> None:
        want = self.opts["accel"]
        if want == "tcg":
            self.accel, self.accel_reason = "tcg", "asked for (accel=tcg)"
            return
        ok, reason = kvm_works(image.kernel)
        if ok:
            self.accel, self.accel_reason = "kvm", reason
        elif want == "kvm":
            raise UserError(f"qemu option accel=kvm: {reason}; use accel=tcg or accel=auto")
        else:
            self.accel, self.accel_reason = "tcg", f"KVM not usable: {reason}"

    def prepare(self, image: Image, ctx: RunContext) -> None:
        self._validate()
        self.ctx, self.image = ctx, image
        self._choose_accel(image)
        why_not = labnet.tap_possible()
        if self.opts["net"] == "user":
            self.net, self.net_reason = "user", "asked for (net=user)"
        elif why_not:
            if self.opts["net"] == "tap":
                raise UserError(f"qemu option net=tap: {why_not}; use net=user")
            self.net, self.net_reason = "user", why_not
        else:
            self.net, self.net_reason = "tap", "tap devices on the lab bridge"
        d = ctx.state.dir / "qemu"
        self._record("dir", path=str(d))
        d.mkdir()
        self._dir = d
        if self.net == "tap":
            if labnet.link_exists(self.bridge):
                raise UserError(f"bridge {self.bridge} already exists and is not this run's")
            gateway = ctx.options.get("subnet_gateway")
            if not gateway:
                raise LabError("the lab gave no subnet_gateway for the bridge")
            self._record("link", name=self.bridge)
            labnet.ip_batch(labnet.bridge_lines(self.bridge, gateway))

    # -- one VM --------------------------------------------------------------------------------

    def _cmdline(self, spec: GuestSpec) -> str:
        net = spec.ip.network
        parts = [
            "console=ttyS0", "root=/dev/vda", "ro", "rootfstype=ext4", "panic=-1",
            # No BIOS disk probing: the kernel finds its disks on virtio.
            "edd=off",
            # Interface names as the kernel gives them: the init looks for eth0.
            "net.ifnames=0",
            f"hostname={spec.name}",
            # The kernel's ip= syntax (the init applies it); no gateway: no way out.
            f"ip={spec.address}:::{net.netmask}:{spec.name}:eth0:off",
        ]
        if self.opts["upper"] == "disk":
            parts.append("overlayroot=disk:/dev/vdb")
        else:
            parts += ["overlayroot=tmpfs", "overlayroot_seed=/dev/vdb"]
        if self.opts["init"] == "systemd":
            parts += ["init=/lib/systemd/systemd", "systemd.show_status=false"]
        else:
            parts.append(f"init={GUEST_INIT}")
        if self.opts["quiet"] == "1":
            parts.append("quiet")
        if self.opts["append"]:
            parts.append(self.opts["append"])
        return " ".join(parts)

    def _netdev(self, spec: GuestSpec, tap: str | None, port: int) -> str:
        if tap is not None:
            return f"tap,id=net0,ifname={tap},script=no,downscript=no"
        # User networking inside the lab subnet, so the guest keeps its own address.
        # restrict=on: the guest reaches nothing outside (no NAT); only the forward works.
        net = spec.ip.network
        hosts = [h for h in (net.broadcast_address - 1, net.broadcast_address - 2)
                 if h != spec.ip.ip and h != spec.gateway]
        return (
            f"user,id=net0,net={net},host={spec.gateway},dns={hosts[0]},restrict=on,"
            f"hostfwd=tcp:127.0.0.1:{port}-{spec.address}:22"
        )

    def _argv(self, spec: GuestSpec, disk: Path, console: Path, qmp_path: Path,
              tap: str | None, port: int) -> list[str]:
        assert self.image is not None
        if self.accel == "kvm":
            accel = kvm_args()
        else:
            tb = f",tb-size={self.opts['tb_size']}" if self.opts["tb_size"] else ""
            accel = ["-accel", f"tcg{tb}"] + (["-cpu", self.opts["cpu"]] if self.opts["cpu"]
                                              else [])
        mem_mib = max(64, self.memory_bytes(spec) >> 20)
        return [
            QEMU, "-name", f"{spec.name},process=scalelab-{spec.name}",
            *accel, "-machine", "pc", "-m", str(mem_mib), "-smp", self.opts["smp"],
            "-nodefaults", "-nographic", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", self._cmdline(spec),
            # The shared image, read-only for QEMU and for the guest: its sha256 never moves.
            "-drive", f"file={_opt_path(self.image.path)},format=raw,if=virtio,readonly=on",
            # The guest's own disk, thrown away with the run: no flushes to wait for.
            "-drive", f"file={_opt_path(disk)},format=raw,if=virtio,cache=unsafe",
            "-netdev", self._netdev(spec, tap, port),
            # No option ROM (iPXE): the guest never boots from the network.
            "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac},romfile=",
            # Entropy from the host: sshd would otherwise wait for the guest's crng.
            "-device", "virtio-rng-pci",
            "-serial", f"file:{_opt_path(console)}",
            "-qmp", f"unix:{_opt_path(qmp_path)},server=on,wait=off",
        ]

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        assert self.ctx is not None and self._dir is not None
        ctx = self.ctx
        logs = ctx.run_dir / "guests"
        logs.mkdir(parents=True, exist_ok=True)
        taps: dict[str, str] = {}
        if self.net == "tap":
            batch: list[str] = []
            for spec in specs:
                tap_dev = labnet.tap_name(self.tag, spec.index)
                self._record("link", name=tap_dev)
                taps[spec.name] = tap_dev
                batch += labnet.tap_lines(tap_dev, self.bridge, spec)
            labnet.ip_batch(batch)
        disk_size = parse_size(self.opts["disk"])
        self._stop.clear()
        self._spawning = True  # the console follower stays while VMs are still coming
        try:
            guests = self._spawn_all(specs, taps, disk_size)
        finally:
            self._spawning = False
        self.guests = guests
        return guests

    def _spawn_all(self, specs: Sequence[GuestSpec], taps: dict[str, str], disk_size: int
                   ) -> list[Guest]:
        assert self.ctx is not None and self._dir is not None
        ctx = self.ctx
        logs = ctx.run_dir / "guests"
        guests = []
        t_created = now_ns()
        for spec in specs:
            disk = self._dir / f"{spec.name}.img"
            make_guest_disk(spec, ctx.client_public_key, disk, disk_size)
            t_created_end = now_ns()
            ctx.on_phase(spec.name, "created", t_created, t_created_end)
            console = logs / f"{spec.name}.console.log"
            qmp_path = self._dir / f"{spec.name}.qmp"
            tap = taps.get(spec.name)
            port = 22 if tap else _free_port(self._ports)
            argv = self._argv(spec, disk, console, qmp_path, tap, port)
            (logs / f"{spec.name}.qemu.argv").write_text(json.dumps(argv) + "\n")
            log = open(logs / f"{spec.name}.qemu.log", "wb")  # noqa: SIM115 - the child's
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
                )
            finally:
                log.close()
            self._record("process", pid=proc.pid, start=proc_start_time(proc.pid))
            t_started = now_ns()
            with self._lock:
                self._vms[spec.name] = _Vm(spec, proc, console, qmp_path, disk, tap, t_started)
            ctx.on_phase(spec.name, "started", t_created_end, t_started)
            self._ensure_watcher()
            t_created = t_started
            host = spec.address if tap else "127.0.0.1"
            guests.append(Guest(spec, host, port, info={
                "console": str(console), "disk": str(disk), "qmp": str(qmp_path),
                "pid": proc.pid, "tap": tap or "", "accel": self.accel,
            }))
            ctx.on_started(guests[-1])
        return guests

    # -- following the consoles ------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch, name="qemu-boot", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        """Report ``booted`` for each VM whose console shows the init's marker."""
        while not self._stop.wait(0.05):
            with self._lock:
                pending = [vm for vm in self._vms.values()
                           if vm.booted_ns is None and not vm.exit_noted]
            if not pending and not self._spawning:
                return
            for vm in pending:
                self._poll_console(vm)

    def _poll_console(self, vm: _Vm) -> None:
        try:
            with vm.console.open("rb") as f:
                f.seek(vm.offset)
                data = f.read()
        except OSError:
            data = b""
        vm.offset += len(data)
        buf = vm.tail + data
        at = buf.find(BOOT_MARKER)
        if at >= 0 and b"\n" in buf[at:]:
            seen = now_ns()
            line = buf[at:buf.index(b"\n", at)].decode(errors="replace")
            m = re.search(r"uptime=([\d.]+)", line)
            vm.boot_uptime = float(m.group(1)) if m else None
            vm.booted_ns = seen
            assert self.ctx is not None
            self.ctx.on_phase(vm.spec.name, "booted", vm.started_ns, seen)
            return
        vm.tail = buf[-256:]
        if vm.proc.poll() is not None and self.ctx is not None:
            vm.exit_noted = True
            # Say it where a person looks first; the SSH wait will report the guest failed.
            note = self.ctx.run_dir / "guests" / f"{vm.spec.name}.qemu.log"
            with contextlib.suppress(OSError), note.open("a") as f:
                f.write(f"scalelab: qemu exited with status {vm.proc.returncode} before "
                        "the guest booted (see its console log)\n")

    # -- teardown ------------------------------------------------------------------------

    def down(self) -> list[str]:
        problems: list[str] = []
        try:
            self._stop.set()
            if self._watcher is not None:
                self._watcher.join(timeout=2)
            with self._lock:
                vms = list(self._vms.values())
            # Ask each QEMU to quit (it exits at once, closing its files); what does not
            # go within a moment is SIGKILLed by the journal's teardown below.
            for vm in vms:
                if vm.proc.poll() is None:
                    with contextlib.suppress(QmpError):
                        qmp(vm.qmp, "quit", timeout=1.0)
            deadline = time.monotonic() + 3.0
            for vm in vms:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    vm.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            problems += teardown(reversed(self._resources))
            for vm in vms:
                with contextlib.suppress(Exception):
                    vm.proc.wait(timeout=5)
        except Exception as exc:  # down() never raises
            problems.append(f"qemu down: {exc}")
        self._vms.clear()
        self._resources.clear()
        self._isolated.clear()
        return problems

    # -- measurements --------------------------------------------------------------------

    def dead(self, guest: Guest) -> str | None:
        vm = self._vms.get(guest.name)
        if vm is None or vm.proc.poll() is None:
            return None
        assert self.ctx is not None
        log = self.ctx.run_dir / "guests" / f"{guest.name}.qemu.log"
        try:
            said = [ln for ln in log.read_text(errors="replace").splitlines()
                    if ln.strip() and not ln.startswith("scalelab:")]
        except OSError:
            said = []
        last = f": {said[-1].strip()[:200]}" if said else ""
        return f"qemu exited with status {vm.proc.returncode}{last} (see {log})"

    def _vm(self, guest: Guest) -> _Vm:
        vm = self._vms.get(guest.name)
        if vm is None:
            raise LabError(f"qemu: no VM for guest {guest.name}")
        return vm

    def guest_memory(self, guest: Guest) -> int | None:
        vm = self._vms.get(guest.name)
        return _rss_bytes(vm.proc.pid) if vm and vm.proc.poll() is None else None

    def upper_bytes(self, guest: Guest) -> int | None:
        vm = self._vms.get(guest.name)
        if vm is None or self.opts["upper"] != "disk":
            return None  # a tmpfs upper layer lives in the guest's RAM
        return ext4_used_bytes(vm.disk)

    def footprint(self, guests: Sequence[Guest]) -> dict[str, dict[str, tuple[float, str]]]:
        """Per guest: the QEMU process's resident memory, the used blocks of its writable
        disk, and when the guest's init started (seconds of guest uptime)."""
        result: dict[str, dict[str, tuple[float, str]]] = {}
        for g in guests:
            values: dict[str, tuple[float, str]] = {}
            mem = self.guest_memory(g)
            if mem is not None:
                values["memory_bytes"] = (float(mem), "B")
            used = self.upper_bytes(g)
            if used is not None:
                values["upper_bytes"] = (float(used), "B")
            vm = self._vms.get(g.name)
            if vm is not None and vm.boot_uptime is not None:
                values["guest_uptime_at_init"] = (vm.boot_uptime, "s")
            result[g.name] = values
        return result

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({
            "accel": self.accel or None,
            "accel_reason": self.accel_reason or None,
            "net": self.net or None,
            "net_reason": self.net_reason or None,
            "init": self.opts["init"],
            "upper": self.opts["upper"],
            "memory": self.opts["memory"],
        })
        if self.image is not None:
            d["kernel"] = vm_info(self.image.dir).get("kernel_version")
        with contextlib.suppress(OSError):
            d["qemu"] = qemu_version()
        return d

    # -- faults ----------------------------------------------------------------------------

    def kill(self, guest: Guest) -> None:
        """Pull the plug: SIGKILL the guest's QEMU."""
        vm = self._vm(guest)
        with contextlib.suppress(ProcessLookupError):
            vm.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            vm.proc.wait(timeout=5)

    def pause(self, guest: Guest) -> None:
        """Freeze the guest's vCPUs (QMP ``stop``): it keeps its memory and its sockets."""
        qmp(self._vm(guest).qmp, "stop")

    def resume(self, guest: Guest) -> None:
        qmp(self._vm(guest).qmp, "cont")

    def isolate(self, guests: Sequence[Guest], others: Sequence[Guest] | None = None) -> None:
        """Take the guests' NICs down (QMP ``set_link``): as if their cable were pulled."""
        if others:
            self.partition(guests, others)
            return
        for g in guests:
            qmp(self._vm(g).qmp, "set_link", name="net0", up=False)
            self._isolated.add(g.name)

    def partition(self, side_a: Sequence[Guest], side_b: Sequence[Guest]) -> None:
        """Drop bridged traffic between two groups of VMs (nftables on their taps)."""
        if self.net != "tap":
            raise FaultNotSupported("qemu: partitions need net=tap (user networking has no "
                                    "bridge between the guests)")
        table = f"slp-{self.tag}"
        ruleset = labnet.partition_ruleset(
            table, [self._vm(g).tap or "" for g in side_a], [self._vm(g).tap or "" for g in side_b])
        if not self._partitioned:
            self._record("nft", family="bridge", table=table)
        out = subprocess.run(["nft", "-f", "-"], input=ruleset, capture_output=True, text=True,
                             check=False)
        if out.returncode != 0:
            raise LabError(f"nft: {out.stderr.strip()}")
        self._partitioned = True

    def heal(self) -> None:
        for name in sorted(self._isolated):
            vm = self._vms.get(name)
            if vm is not None and vm.proc.poll() is None:
                qmp(vm.qmp, "set_link", name="net0", up=True)
        self._isolated.clear()
        if self._partitioned:
            subprocess.run(["nft", "delete", "table", "bridge", f"slp-{self.tag}"],
                           capture_output=True, check=False)
            self._partitioned = False

