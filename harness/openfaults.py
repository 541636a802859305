"""Faults made by hand on a kept lab that outlast the command making them.

``scalelab fault pause`` starts a window that ``scalelab fault resume`` ends, in another
process; the row (``phase="fault"``, start to end, like a nemesis's) can only be written at
the end.  So each window's start (and detail: a rate, a degradation) waits in the lab
directory (``open-faults.json``) until the command that ends it writes its row: pause →
resume, isolate → heal, limit → unlimit, degrade → restore, any of them → kill or
``scalelab down``.  A second start of a window already open keeps its start and takes the
new detail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.store import Recorder

FILE = "open-faults.json"
#: The ops of the windows made by hand (the nemesis's names for them).
OPS = ("pause", "isolate", "bandwidth", "degrade")


class OpenFaults:
    """The windows open in one lab directory: op → guest → start and detail."""

    def __init__(self, lab_dir: Path) -> None:
        self.path = lab_dir / FILE

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        return dict(json.loads(self.path.read_text())) if self.path.is_file() else {}

    def _save(self, state: dict[str, dict[str, dict[str, Any]]]) -> None:
        state = {op: guests for op, guests in state.items() if guests}
        if state:  # replaced whole: a command killed mid-write leaves the old file
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1) + "\n")
            tmp.replace(self.path)
        else:
            self.path.unlink(missing_ok=True)

    def begin(self, op: str, guests: Sequence[str], detail: str = "") -> None:
        state = self._load()
        now, windows = time.time_ns(), state.setdefault(op, {})
        for g in guests:
            windows[g] = {"start_ns": windows.get(g, {}).get("start_ns", now), "detail": detail}
        self._save(state)

    def end(self, ops: Sequence[str], guests: Sequence[str] | None, recorder: Recorder) -> None:
        """Write the rows of the ``ops`` windows of ``guests`` (None: of every guest), from
        their start to now, and forget them."""
        state, now = self._load(), time.time_ns()
        for op in ops:
            windows = state.get(op, {})
            for g in list(windows) if guests is None else [g for g in guests if g in windows]:
                made = windows.pop(g)
                recorder.timing(op, int(made["start_ns"]), now, guest=g, phase="fault",
                                error=str(made["detail"]) or None)
        self._save(state)
