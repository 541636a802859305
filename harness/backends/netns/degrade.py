"""Network conditions for netns guests, from the host side (no control connection needed).

* Loss and duplication: an nftables table per degraded guest (netdev family, on the ingress
  of the guest's bridge port: what it sends), ``numgen random`` per packet → ``drop`` or
  ``dup to`` the destination's port; only packets to the chosen guests' addresses match, so
  the host's SSH to and from every guest is never touched.  Works on this host's kernel.
* Delay, jitter and reordering: tc netem in the guest's namespace on its ``eth0``, behind an
  ``htb`` whose default class has no netem (``harness.plumbing.netem``), where the host
  kernel has ``sch_netem``.  Whether it has is found by building the very same tree on the
  loopback of a throw-away namespace (``unshare -n``: it vanishes with the probe, nothing to
  clean); without it the fault is refused with ``FaultNotSupported`` naming ``sch_netem``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

from harness.backends.base import FaultNotSupported
from harness.degrade import Degradation, Shaping
from harness.plumbing import host, netem, nft

#: Destinations the probe's filters name (any addresses do: lo never sends to them).
_PROBE_TO = ("192.0.2.1",)


@functools.cache
def netem_missing() -> str | None:
    """Why this host cannot delay netns traffic (tc's own words), or None when it can."""
    probe = [Shaping(Degradation(delay=0.001, jitter=0.0005, reorder=0.01), _PROBE_TO)]
    script = netem.tree_script(probe, classful="htb", dev="lo")
    res = host.run(["unshare", "-n", "sh", "-c", script], timeout=30)
    return None if res.ok else (res.stderr.strip().splitlines() or ["tc failed"])[-1]


def require_netem() -> None:
    why = netem_missing()
    if why is not None:
        raise FaultNotSupported(
            "netns: delay, jitter and reordering need tc netem (the kernel module sch_netem), "
            f"which this host's kernel does not have (tc: {why}); loss and duplication "
            "work without it")


def _netem_part(rules: Sequence[Shaping]) -> list[Shaping]:
    return [Shaping(Degradation(delay=r.cond.delay, jitter=r.cond.jitter,
                                reorder=r.cond.reorder), r.to)
            for r in rules if r.cond.needs_netem]


def table_name(tag: str, index: int) -> str:
    """The nft table of one degraded guest (one per guest: restoring it deletes it whole)."""
    return f"sld-{tag}-{index:x}"


def shape(netns: str, port: str, table: str, rules: Sequence[Shaping],
          ports: Mapping[str, str], record: Callable[[], None]) -> None:
    """Make ``rules`` the whole of what the guest in ``netns`` (bridge port ``port``)
    suffers; ``ports``: every guest address → its port; ``record`` journals the nft table
    (called before it exists).  Checks everything before changing anything."""
    delayed = _netem_part(rules)
    if delayed:
        require_netem()
    dropped = [(r.to, r.cond.loss, r.cond.duplicate) for r in rules
               if r.cond.loss or r.cond.duplicate]
    if dropped:
        if not nft.table_exists("netdev", table):
            record()
        nft.apply(nft.degrade_ruleset(table, port, dropped, dict(ports)))
    else:
        nft.delete_table("netdev", table)
    inside = ["ip", "netns", "exec", netns, "sh", "-c"]
    if delayed:
        host.check([*inside, netem.tree_script(delayed, classful="htb", dev="eth0")],
                   what=f"tc netem in {netns}")
    else:
        host.check([*inside, netem.clear_script("eth0")], what=f"tc in {netns}")
