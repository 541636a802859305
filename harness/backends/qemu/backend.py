"""``QemuBackend``: the run's accelerator, network and journal; VMs started and stopped;
their footprint; faults through QMP and nftables."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from harness.backends.base import Backend, FaultNotSupported, Guest, GuestShell, RunContext, now_ns
from harness.backends.guestnetem import shape_in_guest
from harness.backends.qemu import dhcp
from harness.backends.qemu.accel import choose_accel
from harness.backends.qemu.argv import QEMU, VmNic, VmPaths, qemu_argv
from harness.backends.qemu.blockstats import read_block_samples
from harness.backends.qemu.console import ConsoleWatcher
from harness.backends.qemu.hostfacts import (
    ext4_used_bytes,
    free_port,
    mem_available,
    qemu_version,
    rss_bytes,
)
from harness.backends.qemu.labrun import QemuRun
from harness.backends.qemu.options import QemuOptions
from harness.backends.qemu.qmp import QmpError, qmp
from harness.backends.qemu.vm import Vm, last_words, qemu_log, start_qemu
from harness.degrade import Shaping
from harness.errors import LabError, UserError
from harness.guestfiles import make_guest_disk
from harness.identity import GuestSpec, run_tag
from harness.image.cache import Image
from harness.image.vm import vm_info
from harness.plumbing import host, links, nft
from harness.state import Resource, proc_start_time, teardown
from harness.telemetry.hostside import process_cpu_seconds
from harness.telemetry.links import link_samples, read_net_dev
from harness.telemetry.sample import Sample

QUIT_GRACE_SECONDS = 3.0  # ``down``'s wait for QEMUs told to quit over QMP, then SIGKILL


class QemuBackend(Backend):
    name = "qemu"
    faults = frozenset({"kill", "pause", "isolate", "partition", "degrade"})
    needs_vm_image = True
    guests_in_host_memory = False  # their executors live in the VMs' own memory

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.opts = QemuOptions.parse(self.options)
        # Taps and the bridge need root; user networking does not.
        self.requires_root = self.opts.net != "user"
        self._run: QemuRun | None = None
        self.accel = ""
        self.accel_reason = ""
        self.net = ""
        self.net_reason = ""
        self._vms: dict[str, Vm] = {}
        self._resources: list[Resource] = []
        self._isolated: set[str] = set()
        self._partitioned = False
        self._lock = threading.Lock()
        self._ports: set[int] = set()

    def memory_bytes(self, spec: GuestSpec | None = None) -> int:
        """Guest RAM: the lab's per-guest memory if set, else ``memory=``."""
        return self.opts.memory_bytes(spec.memory if spec else None)

    def overhead_bytes(self) -> int:
        """What QEMU itself may keep resident beside the guest's RAM."""
        return self.opts.overhead_bytes(self.accel)

    # -- checks --------------------------------------------------------------------------

    def check(self, image: Image, n_guests: int) -> None:
        for tool, package in ((QEMU, "qemu-system-x86"), ("mkfs.ext4", "e2fsprogs")):
            if shutil.which(tool) is None:
                raise UserError(f"the qemu backend needs {tool}: apt-get install {package}")
        self._check_image(image)
        self._check_memory(n_guests)
        why_not = links.tap_possible()
        if self.opts.net == "tap" and why_not:
            raise UserError(f"qemu option net=tap: {why_not}; use net=user")
        if self.opts.accel == "kvm":
            choose_accel("kvm", image.kernel)  # refuses, saying why, when KVM does not run

    def _check_image(self, image: Image) -> None:
        image.check()
        if not image.vm or not image.kernel.is_file() or not image.initrd.is_file():
            raise UserError(
                f"image {image.key} has no kernel and initramfs (built without the VM parts): "
                "build one with `scalelab image build --vm`"
            )
        if self.opts.init == "systemd" and not vm_info(image.dir).get("systemd"):
            raise UserError(
                f"qemu option init=systemd: image {image.key} has no systemd; rebuild it with "
                "`scalelab image build --vm --force`"
            )

    def _check_memory(self, n_guests: int) -> None:
        overhead = self.overhead_bytes()
        need = n_guests * (self.memory_bytes() + overhead)
        avail = mem_available()
        if need > avail:
            raise UserError(
                f"{n_guests} VMs of {self.opts.memory} (+{overhead >> 20}M for QEMU "
                f"each) need {need >> 20} MiB, the host has {avail >> 20} MiB available: "
                "use fewer guests or a smaller memory="
            )

    # -- the run ---------------------------------------------------------------------------

    @property
    def run(self) -> QemuRun:
        """This run's names and places (what ``prepare`` returned)."""
        if self._run is None:
            raise LabError("the qemu backend is not prepared: call prepare() first")
        return self._run

    def _record(self, kind: str, **attrs: Any) -> None:
        self._resources.append(self.run.ctx.state.record(kind, **attrs))

    @property
    def tag(self) -> str:
        return self.run.tag

    @property
    def bridge(self) -> str:
        return self.run.bridge

    def _choose_accel(self, image: Image) -> None:
        self.accel, self.accel_reason = choose_accel(self.opts.accel, image.kernel)

    def _choose_net(self) -> None:
        why_not = links.tap_possible()
        if self.opts.net == "user":
            self.net, self.net_reason = "user", "asked for (net=user)"
        elif why_not:
            if self.opts.net == "tap":
                raise UserError(f"qemu option net=tap: {why_not}; use net=user")
            self.net, self.net_reason = "user", why_not
        else:
            self.net, self.net_reason = "tap", "tap devices on the lab bridge"

    def prepare(self, image: Image, ctx: RunContext) -> QemuRun:
        self._choose_accel(image)
        self._choose_net()
        tag = run_tag(ctx.run_id)
        run = self._run = QemuRun(ctx, image, tag, links.bridge_name(tag), ctx.state.dir / "qemu",
                                  ConsoleWatcher(ctx.on_phase, ctx.run_dir / "guests"))
        self._record("dir", path=str(run.dir))
        run.dir.mkdir()
        if self.net == "tap":
            if links.link_exists(self.bridge):
                raise UserError(f"bridge {self.bridge} already exists and is not this run's")
            gateway = ctx.options.get("subnet_gateway")
            if not gateway:
                raise LabError("the lab gave no subnet_gateway for the bridge")
            self._record("link", name=self.bridge)
            host.ip_batch(links.bridge_lines(self.bridge, gateway))
        return run

    # -- up --------------------------------------------------------------------------------

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        self.run.logs.mkdir(parents=True, exist_ok=True)
        taps = self._make_taps(specs) if self.net == "tap" else {}
        if self.opts.addressing == "dhcp":  # before any VM asks for its lease
            dhcp.start(self.bridge if taps else "", specs, self.run.dir / "dhcp", self._record)
        with self.run.consoles.spawning():
            guests = [self._spawn(spec, taps.get(spec.name)) for spec in specs]
        self.guests = guests
        return guests

    def _make_taps(self, specs: Sequence[GuestSpec]) -> dict[str, str]:
        """One tap per guest on the lab bridge, journalled before it exists, in one batch."""
        taps: dict[str, str] = {}
        batch: list[str] = []
        for spec in specs:
            tap = links.tap_name(self.tag, spec.index)
            self._record("link", name=tap)
            taps[spec.name] = tap
            batch += links.tap_lines(tap, self.bridge, spec)
        host.ip_batch(batch)
        return taps

    def _spawn(self, spec: GuestSpec, tap: str | None) -> Guest:
        """Make the guest's disk, start its QEMU, and hand it to the lab to wait for."""
        run = self.run
        ctx, logs = run.ctx, run.logs
        t_created = now_ns()
        disk = run.dir / f"{spec.name}.img"
        make_guest_disk(spec, ctx.client_public_key, disk, self.opts.disk_bytes)
        t_created_end = now_ns()
        ctx.on_phase(spec.name, "created", t_created, t_created_end)
        paths = VmPaths(kernel=run.image.kernel, initrd=run.image.initrd,
                        image=run.image.path, disk=disk,
                        console=logs / f"{spec.name}.console.log",
                        qmp=run.dir / f"{spec.name}.qmp")
        nic = VmNic(tap, 22 if tap else free_port(self._ports))
        proc = start_qemu(qemu_argv(self.opts, spec, self.accel, paths, nic), logs, spec.name)
        self._record("process", pid=proc.pid, start=proc_start_time(proc.pid))
        t_started = now_ns()
        vm = Vm(spec, proc, paths.console, paths.qmp, disk, tap, t_started)
        with self._lock:
            self._vms[spec.name] = vm
        ctx.on_phase(spec.name, "started", t_created_end, t_started)
        run.consoles.add(vm)
        guest = Guest(spec, spec.address if tap else "127.0.0.1", nic.port, info={
            "console": str(paths.console), "disk": str(disk), "qmp": str(paths.qmp),
            "pid": proc.pid, "tap": tap or "", "accel": self.accel,
        })
        ctx.on_started(guest)
        return guest

    # -- down ------------------------------------------------------------------------------

    def down(self) -> list[str]:
        problems: list[str] = []
        try:
            if self._run is not None:  # down() after a prepare() that failed early, too
                self._run.consoles.stop()
            with self._lock:
                vms = list(self._vms.values())
            self._quit(vms)
            problems += teardown(reversed(self._resources))
            for vm in vms:
                with contextlib.suppress(Exception):
                    vm.proc.wait(timeout=5)
        except Exception as exc:  # down() never raises
            problems.append(f"qemu down: {exc}")
        self._vms.clear()
        if self._run is not None:
            self._run.consoles.clear()
        self._resources.clear()
        self._isolated.clear()
        return problems

    @staticmethod
    def _quit(vms: Sequence[Vm]) -> None:
        """Ask each QEMU to quit (it exits at once, closing its files); what does not go
        within a moment is SIGKILLed by the journal's teardown."""
        for vm in vms:
            if vm.proc.poll() is None:
                with contextlib.suppress(QmpError):
                    qmp(vm.qmp, "quit", timeout=1.0)
        deadline = time.monotonic() + QUIT_GRACE_SECONDS
        for vm in vms:
            with contextlib.suppress(subprocess.TimeoutExpired):
                vm.proc.wait(timeout=max(0.0, deadline - time.monotonic()))

    # -- measurements ----------------------------------------------------------------------

    def dead(self, guest: Guest) -> str | None:
        vm = self._vms.get(guest.name)
        if vm is None or vm.proc.poll() is None:
            return None
        logs = self.run.logs
        said = last_words(logs, guest.name)
        last = f": {said}" if said else ""
        return (f"qemu exited with status {vm.proc.returncode}{last} "
                f"(see {qemu_log(logs, guest.name)})")

    def _vm(self, guest: Guest) -> Vm:
        vm = self._vms.get(guest.name)
        if vm is None:
            raise LabError(f"qemu: no VM for guest {guest.name}")
        return vm

    def guest_memory(self, guest: Guest) -> int | None:
        vm = self._vms.get(guest.name)
        return rss_bytes(vm.proc.pid) if vm and vm.proc.poll() is None else None

    def upper_bytes(self, guest: Guest) -> int | None:
        vm = self._vms.get(guest.name)
        if vm is None or self.opts.upper != "disk":
            return None  # a tmpfs upper layer lives in the guest's RAM
        return ext4_used_bytes(vm.disk)

    def sample(self, guests: Sequence[Guest], *, slow: bool = False) -> list[Sample]:
        """Per guest: its QEMU process's CPU time and resident memory (what the VM costs the
        host, TCG's translation included), its tap's counters (net=tap) and its drives'
        bytes and operations read and written (QMP)."""
        out: list[Sample] = []
        links = read_net_dev() if self.net == "tap" else {}
        for g in guests:
            vm = self._vms.get(g.name)
            if vm is None or vm.proc.poll() is not None:
                continue  # gone: its last samples stay, none come after
            try:
                out.append(Sample(g.name, "cpu_seconds", process_cpu_seconds(vm.proc.pid), "s",
                                  "counter"))
            except (OSError, ValueError):
                continue
            mem = rss_bytes(vm.proc.pid)
            if mem is not None:
                out.append(Sample(g.name, "memory_bytes", float(mem), "B"))
            if vm.tap:
                out += link_samples(g.name, vm.tap, links)
            out += read_block_samples(g.name, vm.qmp)
            if slow and (used := self.upper_bytes(g)) is not None:
                out.append(Sample(g.name, "upper_bytes", float(used), "B"))
        return out

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
            uptime = self._run.consoles.boot_uptime(g.name) if self._run else None
            if uptime is not None:
                values["guest_uptime_at_init"] = (uptime, "s")
            result[g.name] = values
        return result

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({
            "accel": self.accel or None,
            "accel_reason": self.accel_reason or None,
            "net": self.net or None,
            "net_reason": self.net_reason or None,
            "init": self.opts.init,
            "upper": self.opts.upper,
            "memory": self.opts.memory,
        })
        if self._run is not None:
            d["kernel"] = vm_info(self._run.image.dir).get("kernel_version")
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
        ruleset = nft.partition_ruleset(
            table, [self._vm(g).tap or "" for g in side_a], [self._vm(g).tap or "" for g in side_b])
        if not self._partitioned:
            self._record("nft", family="bridge", table=table)
        nft.apply(ruleset)
        self._partitioned = True

    def heal(self) -> None:
        for name in sorted(self._isolated):
            vm = self._vms.get(name)
            if vm is not None and vm.proc.poll() is None:
                qmp(vm.qmp, "set_link", name="net0", up=True)
        self._isolated.clear()
        if self._partitioned:
            nft.delete_table("bridge", f"slp-{self.run.tag}")
            self._partitioned = False

    def shape(self, guest: Guest, rules: Sequence[Shaping], shell: GuestShell) -> None:
        """netem inside the VM, behind a band for the control connection (``guestnetem``)."""
        if self.net != "tap":
            raise FaultNotSupported("qemu: degrading needs net=tap (user networking has no "
                                    "network between the guests)")
        shape_in_guest(guest, rules, shell)
