"""The sampler: one thread per run that reads what every guest of every lab that is up, and
this lab host, spend, every ``--sample-interval`` seconds from the start of the run to its end
(bring-up included), and appends each round to the run's ``samples.jsonl`` as it is read.

Sampling costs the host what it measures, so the thread measures itself: a round whose CPU
time is more than ``CPU_BUDGET`` of the interval (its cost to the host), or whose wall time is
more than ``WALL_BUDGET`` of it (waiting on a remote dom0), doubles the interval (up to
``MAX_INTERVAL``), a round that costs under a quarter of both halves it again (down to the
interval asked for: a burst of load — a big lab's bring-up, a lab that has since gone down —
does not coarsen the rest of the run; at half the interval such a round costs under half the
budget, so the interval does not swing), and the interval in use is a sample of its own
(``sample_interval``).  CPU,
not wall time, is the cost: on a saturated host a round's wall time grows with the load, and
the sampler must not go blind exactly when the host saturates.  The slow samples (bytes in
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

from harness.backends.base import Guest, HasHostTelemetry, HasTelemetry
from harness.store import Store
from harness.telemetry.hostside import host_samples
from harness.telemetry.sample import Sample

MAX_INTERVAL = 30.0
SLOW_EVERY = 10
#: The share of one core the sampler may cost (CPU per round over the interval): at 1 s,
#: 256 guests (≈ 20 ms a round) stay at 1 s and 1024 (≈ 130 ms) settle at 4 s, ≈ 3 %.
CPU_BUDGET = 0.05
#: The share of the interval a round may wait in all (a dom0 over SSH answers slowly).
WALL_BUDGET = 0.5


def next_interval(interval: float, cpu: float, wall: float, asked: float | None = None) -> float:
    """The interval after a round that took ``cpu`` seconds of CPU and ``wall`` in all, for a
    sampler asked for ``asked`` (None: never below the current one)."""
    if (cpu > CPU_BUDGET * interval or wall > WALL_BUDGET * interval) and interval < MAX_INTERVAL:
        return min(MAX_INTERVAL, interval * 2)
    cheap = cpu < CPU_BUDGET * interval / 4 and wall < WALL_BUDGET * interval / 4
    if asked is not None and cheap and interval > asked:
        return max(asked, interval / 2)
    return interval


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
        self.asked = interval
        self.lab_host = lab_host
        self.rounds = 0
        #: Labs sampled once already: a lab's first round is a slow one, so its costly
        #: series start with it, however long the interval has grown by then.
        self._seen: set[str] = set()
        #: CPU time this thread has used sampling (its own cost, part of the result).
        self.cpu_seconds = 0.0
        self._stop_event = threading.Event()
        #: Rounds run one at a time (``Session.sample_now`` asks for one from another
        #: thread), so they are written in the order they are stamped: a reader that sees
        #: a row stamped after t has every round stamped before it.
        self._round = threading.Lock()

    def run(self) -> None:
        while True:
            began, cpu = time.perf_counter(), time.thread_time()
            self.sample_once()
            spent, used = time.perf_counter() - began, time.thread_time() - cpu
            self.cpu_seconds += used
            self.interval = next_interval(self.interval, used, spent, self.asked)
            if self._stop_event.wait(max(0.0, self.interval - spent)):
                # One last round as the run ends, before its labs go down: what the last
                # scenario did (a transfer shorter than the interval) is in the samples.
                self.sample_once()
                return

    def sample_once(self) -> None:
        """One round: the host, then each lab's live guests; every row written at once."""
        with self._round:
            self._sample_round()

    def _sample_round(self) -> None:
        now = time.time_ns()
        slow = self.rounds % SLOW_EVERY == 0
        self.rounds += 1
        rows = self._lines("", host_samples(), now)
        rows += self._lines("", [Sample("", "sample_interval", self.interval, "s")], now)
        for lab in list(self.labs()):
            if lab.up:
                rows += self._lab_rows(lab, now, slow or lab.name not in self._seen)
                self._seen.add(lab.name)
        self.store.add_sample_lines("".join(rows))

    def _lab_rows(self, lab: SampledLab, now: int, slow: bool) -> list[str]:
        """A lab's rows: sampled here, or on each of its lab hosts (a cluster lab)."""
        backend = lab.backend
        try:
            if isinstance(backend, HasHostTelemetry):
                return [row for r in backend.sample_hosts(lab.live_guests(), slow=slow)
                        for row in self._lines(lab.name, r.samples, r.t_ns, r.lab_host)]
            if isinstance(backend, HasTelemetry):
                return self._lines(lab.name, backend.sample(lab.live_guests(), slow=slow), now)
        except Exception:  # a lab going down under the sampler: its next round is skipped
            pass
        return []

    def _lines(self, lab: str, samples: Sequence[Sample], t_ns: int,
               lab_host: str | None = None) -> list[str]:
        """The rows as JSON lines (the store's samples schema), made by hand: json.dumps of a
        dict per row was most of a round's cost. Names repeat round after round, so each is
        quoted once (``_quoted``); values are floats, which repr() writes as JSON does."""
        q = _quoted
        head = (f'{{"run_id":{q(self.store.context.run_id)},"lab":{q(lab)},'
                f'"lab_host":{q(self.lab_host if lab_host is None else lab_host)},"t":{t_ns},')
        return [f'{head}"guest":{q(s.guest)},"resource":{q(s.resource)},"item":{q(s.item)},'
                f'"kind":{q(s.kind)},"value":{_number(s.value)},"unit":{q(s.unit)}}}\n'
                for s in samples]

    def stop(self) -> None:
        """Stop after the round under way and a last one (their rows are written whole)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=30)
