"""``scalelab fault degrade|restore`` on a kept lab: network conditions set by hand.

The conditions are parsed before anything is looked up, so bad input fails in one line with
nothing touched.  A degrade lasts beyond the command that made it, so its start and
parameters wait in the lab directory (``harness.openfaults``); ``restore`` writes the fault
row (``op="degrade"``, the parameters in ``error``), and the report draws that band.
A second degrade of the same guest replaces the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.backends.base import Backend, Guest
from harness.backends.inject import FaultAction, inject
from harness.degrade import Degradation, Shaping, destinations_label
from harness.errors import UserError
from harness.openfaults import OpenFaults
from harness.store import Recorder


def parse_args(args: Any) -> Degradation | None:
    """The conditions of ``scalelab fault degrade`` (None for any other action)."""
    if args.action != "degrade":
        if args.to or any((args.delay, args.jitter, args.loss, args.duplicate, args.reorder)):
            raise UserError(f"scalelab fault {args.action}: --delay, --jitter, --loss, "
                            "--duplicate, --reorder and --to go with `degrade` only")
        return None
    return Degradation.parse(delay=args.delay or "0", jitter=args.jitter or "0",
                             loss=args.loss or "0", duplicate=args.duplicate or "0",
                             reorder=args.reorder or "0")


def degrade(backend: Backend, lab_dir: Path, sources: Sequence[Guest], cond: Degradation,
            to: Sequence[Guest] | None) -> str:
    """Shape what ``sources`` send to ``to`` (None: every other guest); what it says."""
    dests = list(to) if to is not None else list(backend.guests)
    label = (f"{cond.label()} → "
             f"{destinations_label(None if to is None else [g.name for g in to])}")
    for src in sources:
        rule = Shaping(cond, tuple(d.spec.address for d in dests if d.name != src.name))
        inject(backend, FaultAction.DEGRADE, [src], shaping=[rule])
        OpenFaults(lab_dir).begin("degrade", [src.name], label)
    return label


def restore(backend: Backend, lab_dir: Path, guests: Sequence[Guest], recorder: Recorder
            ) -> None:
    """Undo the guests' conditions and record each one's fault row, start to now."""
    for g in guests:
        inject(backend, FaultAction.RESTORE, [g])
        OpenFaults(lab_dir).end(["degrade"], [g.name], recorder)
