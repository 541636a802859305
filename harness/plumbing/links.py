"""Links of the lab network on the host: one bridge per run, and tap devices for VM guests.

Every device is journalled (kind ``link``) by the caller before it is made, so teardown and
``scalelab clean`` delete it.  The bridge gets the lab gateway's address and nothing else:
no route, no NAT, no forwarding to the outside.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import LabError
from harness.identity import GuestSpec

#: Linux limits interface names to 15 characters.
IFNAMSIZ = 15


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def bridge_name(tag: str) -> str:
    return f"slb-{tag}"


def tap_name(tag: str, index: int) -> str:
    """``slt`` + the run tag + the guest index in hex: 15 characters for 16M guests."""
    name = f"slt{tag}{index:x}"
    if len(name) > IFNAMSIZ:
        raise LabError(f"tap name {name} is longer than {IFNAMSIZ} characters")
    return name


def tap_possible() -> str | None:
    """None when this process can make tap devices, else the reason it cannot."""
    if os.geteuid() != 0:
        return "tap devices need root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist (no tun module?)"
    if not any(Path(d, "ip").exists() for d in os.environ.get("PATH", "/usr/bin").split(":")):
        return "`ip` (iproute2) is not installed"
    return None


def bridge_lines(bridge: str, gateway_cidr: str) -> list[str]:
    """``ip -batch`` lines making the run's bridge with the lab gateway's address."""
    return [
        f"link add {bridge} type bridge",
        f"addr add {gateway_cidr} dev {bridge}",
        f"link set {bridge} up",
    ]


def tap_lines(tap: str, bridge: str, spec: GuestSpec) -> list[str]:
    """``ip -batch`` lines making a persistent tap for ``spec`` on ``bridge``.

    The static neighbour entry spares the host an ARP round trip to a guest that is still
    booting, and keeps large labs from overflowing the neighbour table.
    """
    return [
        f"tuntap add dev {tap} mode tap",
        f"link set {tap} master {bridge} up",
        f"neigh replace {spec.address} lladdr {spec.mac} dev {bridge} nud permanent",
    ]
