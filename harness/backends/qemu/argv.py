"""The ``qemu-system-x86_64`` command line of one VM: a pure function of the options, the
guest's spec, the chosen accelerator and the paths (nothing here touches the host)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.backends.qemu.options import QemuOptions
from harness.identity import GuestSpec
from harness.image.vm import GUEST_INIT
from harness.plumbing.cmdline import SYSTEMD_INIT, BootDevices, guest_cmdline

QEMU = "qemu-system-x86_64"
#: KVM runs the host's CPU model: nothing to translate, so nothing to choose.
KVM_ARGS = ("-accel", "kvm", "-cpu", "host")
#: A serial console and virtio disks in attach order: the shared image, then the guest's.
QEMU_DEVICES = BootDevices(console="ttyS0", root="/dev/vda", upper="/dev/vdb")
#: QEMU refuses less guest RAM than this for a PC with our devices.
MIN_MEMORY_MIB = 64


@dataclass(frozen=True)
class VmPaths:
    """The files one VM is started with."""

    kernel: Path
    initrd: Path
    image: Path  # the shared base image, attached read-only
    disk: Path  # the guest's own writable disk
    console: Path  # where the serial console is written
    qmp: Path  # the QMP unix socket


@dataclass(frozen=True)
class VmNic:
    """How the VM's one NIC is connected: a tap on the lab bridge, or (``tap`` None) user
    networking with ``port`` on host loopback forwarded to the guest's sshd."""

    tap: str | None
    port: int = 22


def opt_path(path: Path | str) -> str:
    """A path inside a QEMU ``key=value,...`` option: commas are doubled."""
    return str(path).replace(",", ",,")


def accel_args(opts: QemuOptions, accel: str) -> list[str]:
    if accel == "kvm":
        return list(KVM_ARGS)
    tb = f",tb-size={opts.tb_size}" if opts.tb_size else ""
    return ["-accel", f"tcg{tb}", *(["-cpu", opts.cpu] if opts.cpu else [])]


def kernel_cmdline(opts: QemuOptions, spec: GuestSpec) -> str:
    return guest_cmdline(
        hostname=spec.name, ip=spec.ip, devices=QEMU_DEVICES,
        init=SYSTEMD_INIT if opts.init == "systemd" else GUEST_INIT,
        upper=opts.upper, no_bios_disks=True, quiet=opts.quiet,
        dhcp=opts.addressing == "dhcp", extra=opts.append,
    )


def netdev(spec: GuestSpec, nic: VmNic) -> str:
    if nic.tap is not None:
        return f"tap,id=net0,ifname={nic.tap},script=no,downscript=no"
    # User networking inside the lab subnet, so the guest keeps its own address.
    # restrict=on: the guest reaches nothing outside (no NAT); only the forward works.
    net = spec.ip.network
    hosts = [h for h in (net.broadcast_address - 1, net.broadcast_address - 2)
             if h != spec.ip.ip and h != spec.gateway]
    return (
        f"user,id=net0,net={net},host={spec.gateway},dns={hosts[0]},restrict=on,"
        f"hostfwd=tcp:127.0.0.1:{nic.port}-{spec.address}:22"
    )


def qemu_argv(opts: QemuOptions, spec: GuestSpec, accel: str, paths: VmPaths, nic: VmNic
              ) -> list[str]:
    """The whole command line; ``accel`` is the accelerator chosen for the run."""
    mem_mib = max(MIN_MEMORY_MIB, opts.memory_bytes(spec.memory) >> 20)
    return [
        QEMU, "-name", f"{spec.name},process=scalelab-{spec.name}",
        *accel_args(opts, accel), "-machine", "pc", "-m", str(mem_mib), "-smp", str(opts.smp),
        "-nodefaults", "-nographic", "-no-reboot",
        "-kernel", str(paths.kernel), "-initrd", str(paths.initrd),
        "-append", kernel_cmdline(opts, spec),
        # The shared image, read-only for QEMU and for the guest: its sha256 never moves.
        "-drive", f"file={opt_path(paths.image)},format=raw,if=virtio,readonly=on,id=image",
        # The guest's own disk, thrown away with the run: no flushes to wait for.
        "-drive", f"file={opt_path(paths.disk)},format=raw,if=virtio,cache=unsafe,id=upper",
        "-netdev", netdev(spec, nic),
        # No option ROM (iPXE): the guest never boots from the network.
        "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac},romfile=",
        # Entropy from the host: sshd would otherwise wait for the guest's crng.
        "-device", "virtio-rng-pci",
        "-serial", f"file:{opt_path(paths.console)}",
        "-qmp", f"unix:{opt_path(paths.qmp)},server=on,wait=off",
    ]
