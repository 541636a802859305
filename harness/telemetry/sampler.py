"""The sampler: one thread per run that reads what every guest of every lab that is up, and
this lab host, spend, every ``--sample-interval`` seconds from the start of the run to its end
(bring-up included), and appends each round to the run's ``samples.jsonl`` as it is read.

Sampling costs the host what it measures, so the thread measures itself: a round that takes
more than a fifth of the interval doubles the interval (up to ``MAX_INTERVAL``), and the
interval in use is a sample of its own (``sample_interval``).  The slow samples (bytes in
each guest's copy-on-write layer: a ``du``) are read every ``SLOW_EVERY`` rounds.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from harness.backends.base import Guest, HasTelemetry
from harness.store import Store
from harness.telemetry.hostside import host_samples
from harness.telemetry.sample import Sample

MAX_INTERVAL = 30.0
SLOW_EVERY = 10
#: The share of the interval a round may take before the interval grows.
BUDGET = 0.2


@functools.lru_cache(maxsize=1 << 16)
def _quoted(text: str) -> str:
    return json.dumps(text)


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else "null"


class SampledLab(Protocol):
    """What the sampler reads of a lab (harness.lab.Lab is one)."""

    name: str
    backend: Any

    @property
    def up(self) -> bool: ...

    def live_guests(self) -> Sequence[Guest]: ...


class Sampler(threading.Thread):
    def __init__(self, store: Store, labs: Callable[[], Sequence[SampledLab]],
                 interval: float, lab_host: str = "") -> None:
        super().__init__(name="sampler", daemon=True)
        self.store, self.labs, self.interval = store, labs, interval
        self.lab_host = lab_host
        self.rounds = 0
        #: CPU time this thread has used sampling (its own cost, part of the result).
        self.cpu_seconds = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            began, cpu = time.perf_counter(), time.thread_time()
            self.sample_once()
            spent = time.perf_counter() - began
            self.cpu_seconds += time.thread_time() - cpu
            if spent > BUDGET * self.interval and self.interval < MAX_INTERVAL:
                self.interval = min(MAX_INTERVAL, self.interval * 2)
            if self._stop_event.wait(max(0.0, self.interval - spent)):
                return

    def sample_once(self) -> None:
        """One round: the host, then each lab's live guests; every row written at once."""
        now = time.time_ns()
        slow = self.rounds % SLOW_EVERY == 0
        self.rounds += 1
        rows = self._lines("", host_samples(), now)
        rows += self._lines("", [Sample("", "sample_interval", self.interval, "s")], now)
        for lab in list(self.labs()):
            if not lab.up or not isinstance(lab.backend, HasTelemetry):
                continue
            try:
                samples = lab.backend.sample(lab.live_guests(), slow=slow)
            except Exception:  # a lab going down under the sampler: its next round is skipped
                continue
            rows += self._lines(lab.name, samples, now)
        self.store.add_sample_lines("".join(rows))

    def _lines(self, lab: str, samples: Sequence[Sample], t_ns: int) -> list[str]:
        """The rows as JSON lines (the store's samples schema), made by hand: json.dumps of a
        dict per row was most of a round's cost. Names repeat round after round, so each is
        quoted once (``_quoted``); values are floats, which repr() writes as JSON does."""
        q = _quoted
        head = (f'{{"run_id":{q(self.store.context.run_id)},"lab":{q(lab)},'
                f'"lab_host":{q(self.lab_host)},"t":{t_ns},')
        return [f'{head}"guest":{q(s.guest)},"resource":{q(s.resource)},"item":{q(s.item)},'
                f'"kind":{q(s.kind)},"value":{_number(s.value)},"unit":{q(s.unit)}}}\n'
                for s in samples]

    def stop(self) -> None:
        """Stop after the round under way (its rows are written whole)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=30)
