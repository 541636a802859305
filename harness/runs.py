"""The runs known on this host, each with its labs: what ``scalelab ls/down/clean`` act on.

A run may hold several labs (the default one, a recipe's, a boot storm's side labs), each
with a state journal of its own.  Every journal names the run it belongs to, so the labs of
one run are found, listed and taken down together: one ``scalelab down`` leaves nothing of
a kept run behind.  A cluster lab's shards on this host have journals too; the cluster lab's
own journal removes them (a callback), so they are listed under it and removed last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.state import RunState, list_states


@dataclass(frozen=True)
class LabEntry:
    """One lab of a run, as its journal and ``guests.json`` describe it."""

    state: RunState

    @property
    def name(self) -> str:
        return str(self.state.header.get("lab") or "default")

    @property
    def is_shard(self) -> bool:
        """A cluster shard on this host, removed by its cluster lab's journal."""
        return bool(self.state.header.get("cluster_run"))

    @property
    def is_cluster(self) -> bool:
        """A cluster lab: no backend attaches to it, its shards (labs of their own) hold its
        guests."""
        return self.state.header.get("backend") == "cluster"

    @property
    def lab_dir(self) -> Path | None:
        d = self.state.header.get("lab_dir") or self.state.header.get("run_dir")
        return Path(str(d)) if d else None

    def inventory(self) -> dict[str, Any]:
        """The lab's ``guests.json`` (empty when it was never written or is unreadable)."""
        if self.lab_dir is None:
            return {}
        try:
            data = json.loads((self.lab_dir / "guests.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def guest_names(self) -> list[str]:
        guests = self.inventory().get("guests", [])
        return [str(g.get("name")) for g in guests if isinstance(g, dict)]


@dataclass(frozen=True)
class Run:
    """All the labs of one run id found on this host, oldest lab first."""

    run_id: str
    labs: tuple[LabEntry, ...]

    @property
    def kept(self) -> bool:
        return any(lab.state.kept for lab in self.labs)

    @property
    def owner_alive(self) -> bool:
        return any(lab.state.owner_alive for lab in self.labs)

    @property
    def created(self) -> float:
        return min(float(lab.state.header.get("created") or 0) for lab in self.labs)

    @property
    def run_dir(self) -> str:
        head = self.labs[0].state.header
        return str(head.get("run_dir") or "")

    @property
    def status(self) -> str:
        if self.kept:
            return "kept up"
        return "running" if self.owner_alive else "dead (leftovers)"

    def take_down(self) -> list[str]:
        """Remove every lab of the run: labs first, then shards their callbacks missed."""
        problems: list[str] = []
        for lab in sorted(self.labs, key=lambda e: e.is_shard):
            if lab.state.dir.exists():
                problems += lab.state.remove_all()
        return problems


def _run_of(state: RunState) -> str:
    head = state.header
    # A shard names its cluster lab's run id; older journals name no run: a run of one.
    return str(head.get("run") or head.get("cluster_run") or state.run_id)


def list_runs() -> list[Run]:
    """The runs with journals on this host, oldest first."""
    states = list_states()
    lab_ids = {s.run_id: _run_of(s) for s in states}
    grouped: dict[str, list[LabEntry]] = {}
    for s in states:
        run = _run_of(s)
        run = lab_ids.get(run, run)  # a shard's cluster lab may itself be a run's side lab
        grouped.setdefault(run, []).append(LabEntry(s))
    runs = [Run(run_id, tuple(sorted(labs, key=lambda e: float(e.state.header.get("created")
                                                                or 0))))
            for run_id, labs in grouped.items()]
    return sorted(runs, key=lambda r: r.created)


def _named(run: Run, ref: str) -> bool:
    here = Path(ref)
    return Path(ref).name == run.run_id or bool(
        here.exists() and run.run_dir and here.resolve() == Path(run.run_dir))


def find_run(ref: str) -> Run:
    """The whole run named by ``ref``: a run id, one of its labs' ids, or its run directory."""
    for run in list_runs():
        if _named(run, ref) or any(Path(ref).name == lab.state.run_id for lab in run.labs):
            return run
    raise UserError(f"no run {ref!r} has labs on this host (see `scalelab ls`)")


def select(ref: str) -> Run | None:
    """What ``ref`` names, for ``scalelab clean``: a whole run, or only the lab whose id it
    is (a lost lab host's shard, say), or None when nothing of it is left here."""
    for run in list_runs():
        if _named(run, ref):
            return run
        labs = tuple(lab for lab in run.labs if Path(ref).name == lab.state.run_id)
        if labs:
            return Run(run.run_id, labs)
    return None


def labs_holding(run: Run, names: Sequence[str]) -> list[tuple[LabEntry, list[str]]]:
    """The labs of ``run`` holding ``names``, each with its share of them, in the run's
    order (every lab, with none of them, when no name is given); a UserError naming the
    guests no lab holds.  A cluster lab's shards are reached through it; a lab host other
    than the client's holds only its shard, which is then the lab."""
    labs = [lab for lab in run.labs if not lab.is_shard] or list(run.labs)
    if not names:
        return [(lab, []) for lab in labs]
    holder: dict[str, LabEntry] = {}
    for lab in labs:
        for name in lab.guest_names():
            holder.setdefault(name, lab)
    missing = [n for n in names if n not in holder]
    if missing:
        known = "; ".join(f"{lab.name}: {', '.join(lab.guest_names()[:3])}…" for lab in labs)
        raise UserError(f"no guest {', '.join(map(repr, missing))} in run {run.run_id} "
                        f"({known or 'it has no lab here'})")
    shares: dict[str, tuple[LabEntry, list[str]]] = {}
    for name in names:
        shares.setdefault(holder[name].state.run_id, (holder[name], []))[1].append(name)
    return list(shares.values())


def newest_kept_run() -> Run | None:
    """The newest run left up on purpose (``scalelab up``, ``--keep-guests``)."""
    kept = [r for r in list_runs() if r.kept]
    return kept[-1] if kept else None
