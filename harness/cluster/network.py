"""The client's steps for a cluster lab's one lab network (see ``harness.cluster.overlay``):
deciding it (subnet blocks, underlay addresses, MTU, the emulated lab hosts of ``local:K``),
then, shard by shard, the VXLAN devices before boot, the probe of every pair of lab hosts,
and joining the devices to the bridges after boot."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from harness.cluster.connect import ShardHandle
from harness.cluster.overlay import (
    EMULATED_MTU,
    Overlay,
    allocate_blocks,
    emulate_underlay,
    emulated_address,
    plan_overlay,
    underlay_of,
    unreachable_pairs,
)
from harness.cluster.plan import LabWorker
from harness.errors import LabError, UserError
from harness.ssh import GuestError
from harness.state import RunState

T = TypeVar("T")
Each = Callable[[Callable[[ShardHandle], T]], list[T]]

#: Seconds the lab hosts may take to see each other's VXLAN probes.
PROBE_TIMEOUT = 5.0


def decide(run_id: str, port: int, placement: Sequence[tuple[LabWorker, int]],
           facts: dict[str, Any], routes: Sequence[ipaddress.IPv4Network],
           requested: str | None, emulate_in: RunState | None = None) -> Overlay:
    """The run's overlay; with ``emulate_in`` (every shard on this machine), its emulated lab
    hosts are made now, journalled there."""
    if not 0 < port < 65536:
        raise UserError(f"--vxlan-port={port}: not a UDP port (1-65535)")
    workers = [w for w, _ in placement]
    names = [str(facts[w.address]["lab_host"]) for w in workers]
    net, blocks = allocate_blocks([c for _, c in placement], routes, requested)
    if emulate_in is not None:
        emulation = emulate_underlay(emulate_in, run_id, len(workers))
        underlay = [(emulated_address(i), EMULATED_MTU) for i in range(len(workers))]
        return plan_overlay(run_id, port, net, blocks, names, underlay, emulation)
    machines: dict[str, str] = {}
    for w, name in zip(workers, names, strict=True):
        other = machines.setdefault(str(facts[w.address]["machine_id"]), name)
        if other != name:
            raise UserError(f"lab hosts {other} and {name} are one machine: the lab network "
                            "needs one Dask lab worker per machine (--nworkers 1)")
    underlay = [underlay_of(w, facts[w.address], n) for w, n in zip(workers, names, strict=True)]
    if len({a for a, _ in underlay}) < len(underlay):
        raise UserError(f"two lab hosts have one underlay address: {underlay}")
    return plan_overlay(run_id, port, net, blocks, names, underlay)


def make_tunnels(overlay: Overlay, shards: Sequence[ShardHandle],
                 plans: Sequence[list[dict[str, str]]], each: Each[None]) -> None:
    """Every shard's VXLAN device, with an entry for each guest MAC on another lab host."""
    owners = [{p["mac"]: overlay.underlay[k] for p in plan} for k, plan in enumerate(plans)]

    def make(h: ShardHandle) -> None:
        remote = {m: a for k, o in enumerate(owners) if k != h.index for m, a in o.items()}
        h.tunnel(remote)

    each(make)


def check_pairs(overlay: Overlay, each: Each[set[str]]) -> None:
    """Before boot: every pair of lab hosts exchanges VXLAN packets, or a LabError names
    each pair that cannot."""
    seen = each(lambda h: h.probe(PROBE_TIMEOUT))
    problems = unreachable_pairs(overlay, seen)
    if problems:
        raise LabError("; ".join(problems) + " (is that UDP port open between them?)")


def join_all(each: Each[Any], failures: dict[str, GuestError]) -> None:
    """Every VXLAN device onto its bridge; guests whose MTU could not be set are failures."""
    for group in each(lambda h: h.join()):
        for name, err in group.failures().items():
            failures.setdefault(name, err)
