"""What a netns guest runs as its PID 1: a short shell script that joins the guest's cgroup,
configures eth0, mounts the overlay root (with /proc, /dev and /sys) from one fstab, pivots
into it and starts sshd and the image's services.  Pure functions of the guest's paths."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.identity import GuestSpec

#: ``-r``: sshd serves each connection from a fork of itself instead of re-executing
#: itself for it (one exec, its config and host key read again: ~5 ms of a guest's CPU per
#: connection, 64 guests connecting at once in a boot storm).  Re-execution gives each
#: connection a fresh address-space layout, worth nothing to a lab guest.
SSHD = "/usr/sbin/sshd -D -e -f /etc/scalelab/sshd_config -r"


@dataclass(frozen=True)
class GuestDirs:
    """A guest's directories on the host: its copy-on-write layer and where its root is."""

    upper: Path
    work: Path
    root: Path

    @classmethod
    def under(cls, gdir: Path) -> GuestDirs:
        return cls(gdir / "upper", gdir / "work", gdir / "root")

    @property
    def fstab(self) -> Path:
        return self.upper.parent / "fstab"


def fstab_text(dirs: GuestDirs, base: Path) -> str:
    """The guest's mounts, in order: overlay root, then /proc, /dev (rbind), /sys."""
    r = dirs.root
    return (
        f"overlay {r} overlay lowerdir={base},upperdir={dirs.upper},workdir={dirs.work} 0 0\n"
        f"proc {r}/proc proc defaults 0 0\n"
        f"/dev {r}/dev none rbind 0 0\n"
        f"sysfs {r}/sys sysfs defaults 0 0\n"
    )


def init_script(spec: GuestSpec, dirs: GuestDirs, cgroup_procs: Sequence[Path],
                services: Sequence[str], gateway_mac: str | None = None) -> str:
    """PID 1 of the guest, run by the host's /bin/sh until it pivots into the overlay.

    ``gateway_mac``: the gateway's neighbour entry is made static (the host has a static
    entry for every guest already), so a guest's first answer to the host waits on no ARP
    exchange, which in a storm of thousands of guests would be one more broadcast per guest
    on the bridge, and one the kernel repeats only after its 1 s ``retrans_time`` if lost.
    """
    q = shlex.quote
    procs = " ".join(q(str(p)) for p in cgroup_procs)
    lines = [
        "set -e",
        f"for f in {procs}; do echo $$ > $f; done",
        "ip -batch - <<EOF",
        "link set lo up",
        f"addr add {spec.ip} dev eth0",
        "link set eth0 addrgenmode none",  # no IPv6 link-local chatter (see the backend)
        "link set eth0 up",
        *([f"neigh replace {spec.gateway} lladdr {gateway_mac} dev eth0 nud permanent"]
          if gateway_mac else []),
        "EOF",
        f"echo {q(spec.name)} > /proc/sys/kernel/hostname",
        # The overlay root and its /proc, /dev and /sys from one fstab: one `mount`
        # process instead of four (each exec costs tens of ms on a loaded host).
        f"mount --all --fstab {q(str(dirs.fstab))}",
        f"cd {dirs.root}",
        # Swap roots and drop the old one: the guest keeps no view of the host's mounts
        # (nor pins other guests' namespaces through them).
        "pivot_root . mnt",
        "cd /",
        "umount -l /mnt",
    ]
    if services:
        lines.append(f"{SSHD} &")
        lines.append("sshd_pid=$!")
        for i, svc in enumerate(services):
            # The service's output goes to the guest's log on the host, line-prefixed.
            lines.append(
                f"(/bin/sh -c {q(svc)} </dev/null 2>&1 | "
                f"while IFS= read -r l; do echo \"[service {i}] $l\"; done) &"
            )
        # PID 1 lives as long as sshd, reaping every orphan meanwhile (dash's wait).
        lines.append('wait "$sshd_pid"')
    else:
        lines.append(f"exec {SSHD}")
    return "\n".join(lines) + "\n"
