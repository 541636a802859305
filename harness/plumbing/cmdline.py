"""The guest kernel command line: what the image's initramfs hook and its init read.

One function for every VM backend (qemu, xen): they differ only in device names (a serial
console and virtio disks under QEMU, ``hvc0`` and ``xvd*`` under Xen PV) and in a few flags
only one of them needs, so those are parameters, not a second copy of the line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

#: systemd's own path on the image; its status lines would only clutter the console log.
SYSTEMD_INIT = "/lib/systemd/systemd"

UpperLayer = Literal["disk", "tmpfs"]


@dataclass(frozen=True)
class BootDevices:
    """Where a guest's kernel finds its console and its two disks."""

    console: str  # e.g. "ttyS0", "hvc0"
    root: str  # the shared image, read-only: "/dev/vda", "/dev/xvda"
    upper: str  # the guest's own disk: "/dev/vdb", "/dev/xvdb"


def guest_cmdline(
    *,
    hostname: str,
    ip: ipaddress.IPv4Interface,
    devices: BootDevices,
    init: str,
    upper: UpperLayer = "disk",
    no_bios_disks: bool = False,
    quiet: bool = False,
    dhcp: bool = False,
    extra: str = "",
) -> str:
    """The kernel command line of one guest, as one string.

    ``init`` is the program the kernel starts (the image's lean init or ``SYSTEMD_INIT``).
    ``upper`` says where the overlay's writable layer lives: on the guest's own disk, or on
    a tmpfs seeded from that disk (the seed's variant).  ``dhcp`` has the init ask the lab's
    DHCP server for the lease of the guest's MAC (``ip=dhcp``) instead of reading the address.
    ``extra`` goes last, so a person's additions override what comes before (the kernel
    keeps the last of a repeated key).
    """
    parts = [
        f"console={devices.console}", f"root={devices.root}", "ro", "rootfstype=ext4",
        "panic=-1",
    ]
    if no_bios_disks:
        # No BIOS disk probing (EDD) under a PC BIOS: the kernel finds its disks on virtio.
        parts.append("edd=off")
    parts += [
        # Interface names as the kernel gives them: the init looks for eth0.
        "net.ifnames=0",
        f"hostname={hostname}",
        # The kernel's ip= syntax (the init applies it); no gateway: no way out of the lab.
        "ip=dhcp" if dhcp else f"ip={ip.ip}:::{ip.network.netmask}:{hostname}:eth0:off",
    ]
    if upper == "disk":
        parts.append(f"overlayroot=disk:{devices.upper}")
    else:
        parts += ["overlayroot=tmpfs", f"overlayroot_seed={devices.upper}"]
    parts.append(f"init={init}")
    if init == SYSTEMD_INIT:
        parts.append("systemd.show_status=false")
    if quiet:
        parts.append("quiet")
    if extra:
        parts.append(extra)
    return " ".join(parts)
