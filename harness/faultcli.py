"""``scalelab fault ACTION GUEST...``: a fault injected by hand into a lab left up.

The lab's backend attaches to it from its journal and ``guests.json`` and the fault goes
through the nemesis, so it is a row of the run like any other.  The guests named are sorted
by the lab holding them, and each lab's share is done by its own backend; ``heal`` naming
no guest heals every lab of the run.  A kept cluster lab has no backend to attach to (its
workers are gone): its guests are reached through its shards on this host, each a lab with
a journal and a ``guests.json`` of its own, and guests on a shard of another lab host are
named in the error, with the command to run there.  Everything is looked up, attached and
checked before the first fault is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import degradecli
from harness.backends import backend_class, parse_backend
from harness.backends.base import Backend, CanAttach, FaultNotSupported
from harness.backends.inject import inject, require
from harness.degrade import Degradation
from harness.errors import UserError
from harness.faults import Nemesis
from harness.openfaults import OPS, OpenFaults
from harness.runs import LabEntry, Run, find_run, labs_holding, newest_kept_run
from harness.store import Context, Store


@dataclass(frozen=True)
class Part:
    """The part of a fault one lab (or one shard of a cluster lab) does: its guests."""

    entry: LabEntry
    backend: Backend
    names: list[str]
    to: list[str] | None


def cli_fault(args: Any) -> int:
    """``scalelab fault``; a fault the backend cannot inject is the user's one-line error."""
    try:
        return _cli_fault(args)
    except FaultNotSupported as err:
        raise UserError(str(err)) from None


def _cli_fault(args: Any) -> int:
    names, to = list(args.guests), (list(args.to) if args.to else None)
    if args.action != "heal" and not names:
        raise UserError(f"scalelab fault {args.action}: name at least one guest")
    cond = degradecli.parse_args(args)  # bad conditions fail here, before any lookup
    run = find_run(args.run) if args.run else newest_kept_run()
    if run is None:
        raise UserError("no run is kept up here (see `scalelab ls`; --run names one)")
    groups = labs_holding(run, names)  # heal, naming no guest: every lab of the run
    if to is not None and [e for e, _ in labs_holding(run, to)] != [e for e, _ in groups]:
        raise UserError(f"scalelab fault {args.action} --to: name guests of the lab the "
                        "guests degraded are in (one lab at a time)")
    parts = [p for entry, mine in groups
             for p in (shard_parts(run, entry, args.action, mine, to) if entry.is_cluster
                       else [Part(entry, attach(entry), mine, to)])]
    for part in parts:  # every capability checked before anything is done
        if cond is not None or args.action == "restore":
            require(part.backend, "degrade")
    store = Store(Path(run.run_dir), Context(run_id=run.run_id, scenario="manual-faults"))
    labels = {apply(args.action, part, store, cond, args.rate) for part in parts}
    done = " ".join(names) or "all"
    print(f"{args.action}: {done}: {labels.pop()}" if cond is not None and len(labels) == 1
          else f"{args.action}: {done} done")
    return 0


def attach(entry: LabEntry) -> Backend:
    kind = str(entry.state.header.get("backend", ""))
    cls = backend_class(parse_backend(kind))
    if not issubclass(cls, CanAttach):
        raise UserError(f"scalelab fault works on labs whose backend can attach to a kept lab; "
                        f"lab {entry.name} runs on {kind}")
    return cls.attach(entry.state, entry.lab_dir or Path("."), entry.inventory())


def shard_parts(run: Run, cluster: LabEntry, action: str, names: list[str],
                to: list[str] | None) -> list[Part]:
    """A kept cluster lab's fault, shard by shard: the shards on this host holding the
    guests named (every one of them for ``heal``)."""
    shards = [lab for lab in run.labs
              if lab.is_shard and lab.state.header.get("cluster_run") == cluster.state.run_id]
    holder = {n: shard for shard in shards for n in shard.guest_names()}
    elsewhere = [n for n in [*names, *(to or [])] if n not in holder]
    if elsewhere:
        raise UserError(_elsewhere(run, cluster, elsewhere))
    if not names:  # heal: the whole lab
        return [Part(shard, attach(shard), [], None) for shard in shards]
    if action == "degrade" and to is None:
        raise UserError("scalelab fault degrade on a kept cluster lab: name the guests whose "
                        "traffic it is with --to (guests of the same lab host)")
    if to is not None and len({holder[n].state.run_id for n in [*names, *to]}) > 1:
        raise UserError(f"scalelab fault {action} --to on a kept cluster lab: the guests and "
                        "those named by --to must be on one lab host (across lab hosts, "
                        "degrade them inside a run, where the nemesis reaches every shard)")
    by_shard: dict[str, list[str]] = {}
    for n in names:
        by_shard.setdefault(holder[n].state.run_id, []).append(n)
    entries = {shard.state.run_id: shard for shard in shards}
    return [Part(entries[sid], attach(entries[sid]), part, to)
            for sid, part in by_shard.items()]


def _elsewhere(run: Run, cluster: LabEntry, names: list[str]) -> str:
    """The error for guests whose shards are on other lab hosts: where to run the fault."""
    inventory = {str(g.get("name")): g for g in cluster.inventory().get("guests", [])
                 if isinstance(g, dict)}
    where = [f"{n} on {inventory.get(n, {}).get('lab_host') or 'another lab host'}"
             for n in names]
    return (f"{', '.join(where)}: a shard of another lab host holds it; run `scalelab fault` "
            f"there (`--run {run.run_id}-sK`: `scalelab ls` there names it)")


#: What each action does to the windows open by hand (``harness.openfaults``): the op of
#: the window it begins, or the ops of those it ends.
BEGINS = {"pause": "pause", "isolate": "isolate", "limit": "bandwidth"}
ENDS = {"resume": ("pause",), "heal": ("isolate",), "unlimit": ("bandwidth",),
        "kill": OPS}


def apply(action: str, part: Part, store: Store, cond: Degradation | None, rate: str) -> str:
    """Do ``action`` to the part's guests through the nemesis, and begin or end the
    windows it opens or closes (their rows); what a degrade says."""
    backend, entry = part.backend, part.entry
    recorder = store.scoped(lab=entry.name)  # a shard's: its cluster lab's name
    nem = Nemesis(backend, recorder)
    lab_dir = entry.lab_dir or Path(".")
    windows = OpenFaults(lab_dir)
    if action == "kill":
        windows.end(ENDS[action], part.names, recorder)  # what it suffered ends with it
        nem.kill(part.names)  # recorded: the guest is lost for the rest of the run
    elif cond is not None:
        return degradecli.degrade(backend, lab_dir, nem._guests(part.names), cond,
                                  None if part.to is None else nem._guests(part.to))
    elif action == "restore":
        degradecli.restore(backend, lab_dir, nem._guests(part.names), recorder)
    else:
        inject(backend, action, nem._guests(part.names), rate=rate)
        if action in BEGINS:
            windows.begin(BEGINS[action], part.names, rate if action == "limit" else "")
        else:  # resume, unlimit, heal (naming no guest: every isolation of the lab)
            windows.end(ENDS[action], part.names or None, recorder)
    return ""


def end_windows(run: Run) -> None:
    """The rows of the windows still open by hand as ``run`` goes down (ending now)."""
    for entry in run.labs:
        windows = OpenFaults(entry.lab_dir) if entry.lab_dir is not None else None
        if windows is None or not windows.path.is_file() or not run.run_dir:
            continue
        store = Store(Path(run.run_dir), Context(run_id=run.run_id, scenario="manual-faults",
                                                 lab=entry.name))
        try:
            windows.end(OPS, None, store.scoped())
        finally:
            store.close()
