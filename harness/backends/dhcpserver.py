"""``addressing=dhcp`` for the VM backends: the option, what the lab's dnsmasq is told, and
what its log says (the seed's "IP addresses distributed by a dhcp server in a coherent way
by generating the MAC address").

One ``dhcp-host`` line per guest (MAC → its address and name, an infinite lease), a
``static`` range (no pool to hand out from), ``dhcp-ignore=tag:!known`` (a MAC not listed
gets no answer at all), no DNS (``port=0``), no router and no DNS server offered (the lab
has no way out), and the guests' MTU when the lab gives one.  dnsmasq binds the lab bridge
only (``bind-interfaces``), so several labs' servers live side by side.  Where it runs is
the backend's: qemu starts it on this host's lab bridge (``backends/qemu/dhcp``), xen on
dom0's bridge over the connection it holds (``backends/xen/dhcp``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Literal

from harness.errors import UserError
from harness.identity import GuestSpec

Addressing = Literal["static", "dhcp"]
#: static (the default): the address on the kernel command line (``ip=``); dhcp: the
#: guest's init asks the lab's dnsmasq for the lease of its MAC (``ip=dhcp``).
ADDRESSINGS: tuple[Addressing, ...] = ("static", "dhcp")
#: dnsmasq's log lines that say it serves (static leases only, or a range).
SERVING = ("DHCP, static leases only", "DHCP, IP range")


def parse_addressing(options: Mapping[str, str], backend: str) -> Addressing:
    """``addressing=`` of a ``backend://`` URL (missing or empty: static), or a one-line
    UserError saying what to use."""
    value = options.get("addressing") or ADDRESSINGS[0]
    for a in ADDRESSINGS:
        if value == a:
            return a
    raise UserError(f"{backend} option addressing={value!r}: use "
                    + " or ".join(f"addressing={a}" for a in ADDRESSINGS))


def host_lines(specs: Sequence[GuestSpec]) -> list[str]:
    """One ``dhcp-host`` value per guest: its MAC → its address and name, forever."""
    return [f"{s.mac},{s.address},{s.name},infinite" for s in specs]


def config_text(bridge: str, specs: Sequence[GuestSpec], lease_file: PurePath | str,
                mtu: int | None = None, hosts_file: PurePath | str | None = None) -> str:
    """dnsmasq's configuration for the guests ``specs`` on ``bridge`` (their subnet).  With
    ``hosts_file`` the guests' lines are read from there (``host_lines``; dnsmasq reads it
    again on SIGHUP, so guests can be added while it runs), else they are in the text."""
    net = specs[0].ip.network
    lines = [
        "port=0", "no-resolv", "no-hosts", "bind-interfaces", f"interface={bridge}",
        "except-interface=lo", "dhcp-authoritative", "log-dhcp",
        f"dhcp-leasefile={lease_file}",
        f"dhcp-range={net.network_address},static,{net.netmask},infinite",
        "dhcp-ignore=tag:!known",
        # Empty options: no router, no DNS server (no way out of the lab).
        "dhcp-option=option:router", "dhcp-option=option:dns-server",
    ]
    if mtu:
        lines.append(f"dhcp-option=option:mtu,{mtu}")
    if hosts_file is not None:
        lines.append(f"dhcp-hostsfile={hosts_file}")
    else:
        lines += [f"dhcp-host={line}" for line in host_lines(specs)]
    return "\n".join(lines) + "\n"


def serving(log_text: str) -> bool:
    """Whether dnsmasq's log says it answers DHCP."""
    return any(marker in log_text for marker in SERVING)


def acked(log_text: str) -> dict[str, str]:
    """MAC → address of every lease dnsmasq acknowledged, from its log
    (``... DHCPACK(br) 10.213.9.2 02:5c:... g000``)."""
    out: dict[str, str] = {}
    for line in log_text.splitlines():
        parts = line.split()
        i = next((i for i, p in enumerate(parts) if p.startswith("DHCPACK(")), None)
        if i is not None and len(parts) > i + 2:
            ipaddress.IPv4Address(parts[i + 1])
            out[parts[i + 2].lower()] = parts[i + 1]
    return out
