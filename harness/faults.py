"""The nemesis: faults injected into running guests, each one recorded as a timed row.

Every fault is a row with ``phase="fault"``, ``op`` its kind, ``guest`` its target and
``start``/``end`` its window, so the report can draw it as a band behind the timing plots
(Jepsen does this).  A killed guest is also recorded as ``phase="lost"`` and removed from
the fleet, so the rest of the run goes on without it.

Which faults a backend supports is in its ``faults`` set and its capabilities
(``harness.backends.base``); every fault goes through the one dispatcher,
``harness.backends.inject``, which refuses another one with ``FaultNotSupported`` naming the
backend.  Network conditions (``degraded``: delay, jitter, loss, duplication, reordering)
are a fault like the others, whose row carries its parameters; ``harness.regions`` builds
delay matrices out of them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.backends.base import Backend, Guest
from harness.backends.inject import FaultAction, inject, no_shell, require
from harness.degrade import Degradation, Shaping, destinations_label, parse_spec
from harness.errors import LabError, UserError
from harness.ssh import FanOut
from harness.store import Recorder


class Schedule(threading.Thread):
    """A nemesis schedule running in the background; ``join`` re-raises what failed in it."""

    def __init__(self, plan: Callable[[], None]) -> None:
        super().__init__(name="nemesis", daemon=True)
        self._plan = plan
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._plan()
        except BaseException as exc:  # kept for join(): a daemon thread's error is lost
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None and not self.is_alive():
            raise self.error


@dataclass
class _Open:
    kind: str
    guests: list[str]
    start_ns: int
    detail: str = ""


@dataclass
class Nemesis:
    """Inject faults into a lab's guests through its backend."""

    backend: Backend
    recorder: Recorder
    fleet: FanOut | None = None
    open: list[_Open] = field(default_factory=list)
    #: Each guest's network conditions now (what ``degraded`` blocks have added).
    shaping: dict[str, list[Shaping]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _guest(self, name: str) -> Guest:
        for g in self.backend.guests:
            if g.name == name:
                return g
        raise UserError(f"no guest {name!r} in this lab")

    def _guests(self, names: Sequence[str]) -> list[Guest]:
        return [self._guest(n) for n in names]

    def _begin(self, kind: str, guests: Sequence[str], detail: str = "") -> _Open:
        f = _Open(kind, list(guests), time.time_ns(), detail)
        with self._lock:
            self.open.append(f)
        return f

    def _end(self, f: _Open) -> None:
        end = time.time_ns()
        with self._lock:
            if f in self.open:
                self.open.remove(f)
        for name in f.guests:
            self.recorder.timing(f.kind, f.start_ns, end, guest=name, phase="fault",
                                 error=f.detail or None)

    # -- faults ----------------------------------------------------------------------------

    def kill(self, names: Sequence[str]) -> None:
        """Kill guests outright; they are lost for the rest of the run."""
        require(self.backend, "kill")
        t = time.time_ns()
        for name in names:
            inject(self.backend, FaultAction.KILL, [self._guest(name)])
            now = time.time_ns()
            self.recorder.timing("kill", t, now, guest=name, phase="fault")
            self.recorder.timing("lost", now, now, guest=name, phase="lost", ok=False,
                                 error_class="lost", error="killed by the nemesis")
            if self.fleet is not None:
                self.fleet.lose(name)

    @contextlib.contextmanager
    def paused(self, names: Sequence[str]) -> Iterator[None]:
        """Freeze guests for the ``with`` block (every process stopped, sockets kept)."""
        require(self.backend, "pause")
        f = self._begin("pause", names)
        inject(self.backend, FaultAction.PAUSE, self._guests(names))
        try:
            yield
        finally:
            inject(self.backend, FaultAction.RESUME, self._guests(names))
            self._end(f)

    @contextlib.contextmanager
    def isolated(self, names: Sequence[str]) -> Iterator[None]:
        """Cut guests off the lab network for the ``with`` block."""
        require(self.backend, "isolate")
        f = self._begin("isolate", names)
        inject(self.backend, FaultAction.ISOLATE, self._guests(names))
        try:
            yield
        finally:
            inject(self.backend, FaultAction.HEAL, [])
            self._end(f)

    @contextlib.contextmanager
    def partitioned(self, side_a: Sequence[str], side_b: Sequence[str]) -> Iterator[None]:
        """Drop all traffic between two groups of guests (each group still talks inside)."""
        require(self.backend, "partition")
        f = self._begin("partition", [*side_a, *side_b],
                        f"{','.join(side_a)} | {','.join(side_b)}")
        inject(self.backend, FaultAction.PARTITION, self._guests(side_a),
               others=self._guests(side_b))
        try:
            yield
        finally:
            inject(self.backend, FaultAction.HEAL, [])
            self._end(f)

    @contextlib.contextmanager
    def bandwidth(self, names: Sequence[str], rate: str) -> Iterator[None]:
        """Limit guests' bandwidth (tc tbf, both directions) for the ``with`` block."""
        require(self.backend, "bandwidth")
        f = self._begin("bandwidth", names, rate)
        inject(self.backend, FaultAction.LIMIT, self._guests(names), rate=rate)
        try:
            yield
        finally:
            inject(self.backend, FaultAction.UNLIMIT, self._guests(names))
            self._end(f)

    @contextlib.contextmanager
    def degraded(self, names: Sequence[str], *, delay: str = "0", jitter: str = "0",
                 loss: str = "0", duplicate: str = "0", reorder: str = "0",
                 to: Sequence[str] | None = None) -> Iterator[Degradation]:
        """Degrade what the guests ``names`` send to the guests ``to`` (default: every other
        guest) for the ``with`` block: delay (±jitter), loss, duplication, reordering.  The
        harness's own connections are never degraded; blocks nest (regions use that)."""
        cond = Degradation.parse(delay=delay, jitter=jitter, loss=loss, duplicate=duplicate,
                                 reorder=reorder)
        with self.degraded_by(names, cond, to):
            yield cond

    @contextlib.contextmanager
    def degraded_by(self, names: Sequence[str], cond: Degradation,
                    to: Sequence[str] | None = None) -> Iterator[None]:
        """:meth:`degraded` with the conditions already parsed."""
        require(self.backend, "degrade")
        sources = self._guests(names)
        dests = self._guests(to) if to is not None else list(self.backend.guests)
        rules = {s.name: Shaping(cond, tuple(d.spec.address for d in dests
                                             if d.name != s.name)) for s in sources}
        applied: list[Guest] = []
        try:
            for src in sources:
                self._shape(src, add=rules[src.name])
                applied.append(src)
        except BaseException:
            self._unshape(applied, rules)
            raise
        label = f"{cond.label()} → {destinations_label(None if to is None else list(to))}"
        f = self._begin("degrade", names, label)
        try:
            yield
        finally:
            self._unshape(applied, rules)
            self._end(f)

    def _shape(self, guest: Guest, *, add: Shaping | None = None,
               remove: Shaping | None = None) -> None:
        """Change one guest's list of shapings and give the backend the whole new list
        (kept only once the backend has made it real)."""
        with self._lock:
            current = list(self.shaping.get(guest.name, []))
        if add is not None:
            current.append(add)
        if remove is not None and remove in current:
            current.remove(remove)
        inject(self.backend, FaultAction.DEGRADE, [guest], shaping=current, shell=self._shell)
        with self._lock:
            self.shaping[guest.name] = current

    def _unshape(self, guests: Sequence[Guest], rules: dict[str, Shaping]) -> None:
        for g in guests:
            if self.fleet is not None and g.name not in self.fleet.names:
                continue  # lost meanwhile: nothing left to restore
            self._shape(g, remove=rules[g.name])

    def _shell(self, guest: Guest, script: str) -> str:
        """Run a script in the guest over the fleet's connection (the control connection)."""
        if self.fleet is None:
            return no_shell(guest, script)
        res = self.fleet.run(script, names=[guest.name], timeout=60)[guest.name]
        if not res.ok:
            raise LabError(f"{guest.name}: shaping its traffic failed: {res.message()}")
        return str(res.stdout)

    # -- schedules -------------------------------------------------------------------------

    def schedule(self, plan: Sequence[tuple[float, str, Sequence[str], float]]) -> Schedule:
        """Run ``(at_seconds, kind, guests, duration_seconds)`` faults in a background thread.

        ``kind`` is kill, pause, isolate, bandwidth:<rate> or degrade:<conditions> (e.g.
        ``degrade:delay=100ms,jitter=10ms,loss=1%,to=g001+g002``), checked (with the
        backend's capability and the guests' names) before anything starts.  Entries run in
        the order of their offsets, one at a time: one that falls inside the previous fault
        starts when that fault ends.  Returns the started thread; its ``join`` re-raises
        what failed.
        """
        steps = [(at, self._step(kind, names), duration) for at, kind, names, duration in plan]
        t0 = time.monotonic()

        def run() -> None:
            for at, step, duration in sorted(steps, key=lambda p: p[0]):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                cm = step()
                if cm is not None:
                    with cm:
                        time.sleep(duration)

        thread = Schedule(run)
        thread.start()
        return thread

    def _step(self, kind: str, names: Sequence[str]
              ) -> Callable[[], contextlib.AbstractContextManager[Any] | None]:
        """One schedule entry, checked now: what starts it when its time comes (a context
        manager lasting its duration, or None for a kill)."""
        base, _, arg = kind.partition(":")
        if base not in ("kill", "pause", "isolate", "bandwidth", "degrade"):
            raise UserError(f"unknown fault {kind!r} in the schedule")
        require(self.backend, base)
        self._guests(names)
        if base == "degrade":
            cond, to = parse_spec(arg)
            if to is not None:
                self._guests(to)
            return lambda: self.degraded_by(names, cond, to)
        if base == "kill":
            return lambda: self.kill(names)
        if base == "bandwidth":
            return lambda: self.bandwidth(names, arg)
        return lambda: self.paused(names) if base == "pause" else self.isolated(names)

    def close(self) -> None:
        """Record faults still open (a run that ended inside one) as ending now."""
        for f in list(self.open):
            self._end(f)
