"""The lab network on the host: one bridge per run, and tap devices for VM guests.

Every device is journalled (kind ``link``) by the caller before it is made, so teardown and
``scalelab clean`` delete it.  The bridge gets the lab gateway's address and nothing else:
no route, no NAT, no forwarding to the outside.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
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


def ip_batch(lines: Sequence[str]) -> None:
    """Run ``ip -batch`` on ``lines`` (one process for any number of changes)."""
    if not lines:
        return
    out = subprocess.run(
        ["ip", "-batch", "-"], input="\n".join(lines) + "\n",
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise LabError(f"ip -batch failed: {out.stderr.strip() or out.stdout.strip()}")


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


def partition_ruleset(table: str, side_a: Sequence[str], side_b: Sequence[str]) -> str:
    """An nftables ruleset (bridge family) dropping bridged frames between two groups of
    bridge ports (the guests' veths or taps); the host keeps reaching every guest."""

    def elements(ports: Sequence[str]) -> str:
        return ", ".join(f'"{p}"' for p in ports)

    return f"""
table bridge {table} {{
  set side_a {{ type ifname; elements = {{ {elements(side_a)} }} }}
  set side_b {{ type ifname; elements = {{ {elements(side_b)} }} }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname @side_a oifname @side_b drop
    iifname @side_b oifname @side_a drop
  }}
}}
"""
