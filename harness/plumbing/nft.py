"""nftables rulesets of a lab, each one table the journal names (kind ``nft``) so teardown
and ``scalelab clean`` delete it whole; nothing here touches a table it was not given."""

from __future__ import annotations

from collections.abc import Sequence

from harness.plumbing import host


def apply(ruleset: str) -> None:
    """Load a ruleset (``nft -f -``); a LabError says what nft refused."""
    host.check(["nft", "-f", "-"], stdin=ruleset, what="nft -f")


def table_exists(family: str, table: str) -> bool:
    return host.run(["nft", "list", "table", family, table]).ok


def delete_table(family: str, table: str) -> None:
    """Delete the table if it is there (idempotent, never raises)."""
    if table_exists(family, table):
        host.run(["nft", "delete", "table", family, table])


def partition_ruleset(table: str, side_a: Sequence[str], side_b: Sequence[str], *,
                      by_mac: bool = False) -> str:
    """A ruleset (bridge family) dropping bridged frames between two groups of guests; the
    host keeps reaching every guest.  The groups are bridge ports (the guests' veths or
    taps), or with ``by_mac`` the guests' MACs: that holds whichever lab host a guest is
    on, since each host drops what it would bridge from one side to the other, whether to
    a local port or into a tunnel."""
    if by_mac:
        kind, src, dst = "ether_addr", "ether saddr", "ether daddr"
        a, b = (", ".join(sorted(m.lower() for m in side)) for side in (side_a, side_b))
    else:
        kind, src, dst = "ifname", "iifname", "oifname"
        a, b = (", ".join(f'"{p}"' for p in side) for side in (side_a, side_b))
    return f"""
table bridge {table} {{
  set side_a {{ type {kind}; elements = {{ {a} }} }}
  set side_b {{ type {kind}; elements = {{ {b} }} }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    {src} @side_a {dst} @side_b drop
    {src} @side_b {dst} @side_a drop
  }}
}}
"""


def forward_only_to(table: str, bridge: str, allowed: Sequence[str]) -> str:
    """A ruleset (inet family): traffic arriving from ``bridge`` is forwarded only to the
    ``allowed`` subnets (the lab's own), never anywhere else, and no IPv6 at all."""
    return f"""
table inet {table} {{
  set lab {{ type ipv4_addr; flags interval; elements = {{ {", ".join(allowed)} }} }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{bridge}" ip daddr != @lab drop
    iifname "{bridge}" meta nfproto ipv6 drop
  }}
}}
"""


#: numgen's modulus for a probability: one in a million is as fine as loss ever needs.
CHANCE_SCALE = 1_000_000


def chance(fraction: float) -> str:
    """An nft expression true for ``fraction`` of packets (``numgen random``, per packet);
    none at all for every packet (``< 1000000`` is past the range nft takes for the mod)."""
    below = round(fraction * CHANCE_SCALE)
    return "" if below >= CHANCE_SCALE else f"numgen random mod {CHANCE_SCALE} < {below}"


def degrade_ruleset(table: str, device: str,
                    rules: Sequence[tuple[Sequence[str], float, float]],
                    ports: dict[str, str]) -> str:
    """A ruleset (netdev family, ingress of one guest's bridge port ``device``, i.e. what
    that guest sends) that, per rule ``(destinations, loss, duplicate)``, drops ``loss`` of
    the IPv4 packets to those destinations and sends a copy of ``duplicate`` of the rest
    straight out of the destination's own port (``ports``: address → port).  The bridge
    family has no ``dup``; netdev's ``dup to`` a device does.  Packets to the host (the
    harness's SSH) match no rule.  Loading it replaces the table whole, atomically."""
    lines = []
    for dests, loss, duplicate in rules:
        addrs = ", ".join(dests)
        if loss:
            lines.append(f"ip daddr {{ {addrs} }} {chance(loss)} drop")
        if duplicate:
            to = ", ".join(f'{a} : "{ports[a]}"' for a in dests)
            lines.append(f"ip daddr {{ {addrs} }} {chance(duplicate)} "
                         f"dup to ip daddr map {{ {to} }}")
    body = "\n    ".join(lines)
    return f"""
table netdev {table}
delete table netdev {table}
table netdev {table} {{
  chain from_guest {{
    type filter hook ingress device "{device}" priority 0; policy accept;
    {body}
  }}
}}
"""
