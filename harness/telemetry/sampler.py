"""The sampler: one thread per run that reads what every guest of every lab that is up, and
this lab host, spend, every ``--sample-interval`` seconds from the start of the run to its end
(bring-up included), and appends each round to the run's ``samples.jsonl`` as it is read.

Sampling costs the host what it measures, so the thread measures itself: a round that takes
more than a fifth of the interval doubles the interval (up to ``MAX_INTERVAL``), and the
interval in use is a sample of its own (``sample_interval``).  The slow samples (bytes in
each guest's copy-on-write layer: a ``du``) are read every ``SLOW_EVERY`` rounds.
"""

from __future__ import annotations

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
        rows = self._rows("", host_samples(), now)
        rows += self._rows("", [Sample("", "sample_interval", self.interval, "s")], now)
        for lab in list(self.labs()):
            if not lab.up or not isinstance(lab.backend, HasTelemetry):
                continue
            try:
                samples = lab.backend.sample(lab.live_guests(), slow=slow)
            except Exception:  # a lab going down under the sampler: its next round is skipped
                continue
            rows += self._rows(lab.name, samples, now)
        self.store.add_samples(rows)

    def _rows(self, lab: str, samples: Sequence[Sample], t_ns: int) -> list[dict[str, Any]]:
        run_id = self.store.context.run_id
        return [{"run_id": run_id, "lab": lab, "lab_host": self.lab_host, "guest": s.guest,
                 "t": t_ns, "resource": s.resource, "item": s.item, "kind": s.kind,
                 "value": s.value, "unit": s.unit} for s in samples]

    def stop(self) -> None:
        """Stop after the round under way (its rows are written whole)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=30)
