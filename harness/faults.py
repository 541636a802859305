"""The nemesis: faults injected into running guests, each one recorded as a timed row.

Every fault is a row with ``phase="fault"``, ``op`` its kind, ``guest`` its target and
``start``/``end`` its window, so the report can draw it as a band behind the timing plots
(Jepsen does this).  A killed guest is also recorded as ``phase="lost"`` and removed from
the fleet, so the rest of the run goes on without it.

Which faults a backend supports is in its ``faults`` set and its capabilities
(``harness.backends.base``); every fault goes through the one dispatcher,
``harness.backends.inject``, which refuses another one with ``FaultNotSupported`` naming the
backend.  netem (delay, loss) is not in this host's kernel, so bandwidth limits use tc
``tbf`` only.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.backends.base import Backend, FaultNotSupported, Guest
from harness.backends.inject import FaultAction, inject, require
from harness.errors import UserError
from harness.ssh import FanOut
from harness.store import Recorder


def netem_available() -> bool:
    """Whether this kernel has sch_netem (delay/loss); this host's kernel does not."""
    res = subprocess.run(["modprobe", "-n", "sch_netem"], capture_output=True, check=False)
    return res.returncode == 0


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

    def delay(self, names: Sequence[str], ms: float) -> None:
        """Delay needs netem, which this kernel lacks: say so rather than pretend."""
        if not netem_available():
            raise FaultNotSupported("delay and loss need tc netem (sch_netem), which this "
                                    "kernel does not have; use bandwidth limits instead")
        raise FaultNotSupported("delay is not implemented yet")

    # -- schedules -------------------------------------------------------------------------

    def schedule(self, plan: Sequence[tuple[float, str, Sequence[str], float]]) -> Schedule:
        """Run ``(at_seconds, kind, guests, duration_seconds)`` faults in a background thread.

        ``kind`` is kill, pause, isolate or bandwidth:<rate>, checked (with the backend's
        capability and the guests' names) before anything starts.  Entries run in the order
        of their offsets, one at a time: one that falls inside the previous fault starts when
        that fault ends.  Returns the started thread; its ``join`` re-raises what failed.
        """
        for _, kind, names, _ in plan:
            base = kind.split(":", 1)[0]
            if base not in ("kill", "pause", "isolate", "bandwidth"):
                raise UserError(f"unknown fault {kind!r} in the schedule")
            require(self.backend, base)
            self._guests(names)
        t0 = time.monotonic()

        def run() -> None:
            for at, kind, names, duration in sorted(plan, key=lambda p: p[0]):
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                if kind == "kill":
                    self.kill(names)
                    continue
                cm: contextlib.AbstractContextManager[None]
                if kind == "pause":
                    cm = self.paused(names)
                elif kind == "isolate":
                    cm = self.isolated(names)
                else:
                    cm = self.bandwidth(names, kind.split(":", 1)[1])
                with cm:
                    time.sleep(duration)

        thread = Schedule(run)
        thread.start()
        return thread

    def close(self) -> None:
        """Record faults still open (a run that ended inside one) as ending now."""
        for f in list(self.open):
            self._end(f)


def cli_fault(args: Any) -> int:
    """``scalelab fault ACTION GUEST...`` against a lab left up, whose backend can attach."""
    from pathlib import Path

    from harness.backends import backend_class, parse_backend
    from harness.backends.base import CanAttach
    from harness.runs import find_run, lab_holding, newest_kept_run
    from harness.store import Context, Store

    names = list(args.guests)
    if args.action != "heal" and not names:
        raise UserError(f"scalelab fault {args.action}: name at least one guest")
    run = find_run(args.run) if args.run else newest_kept_run()
    if run is None:
        raise UserError("no run is kept up here (see `scalelab ls`; --run names one)")
    entry = lab_holding(run, names)
    kind = str(entry.state.header.get("backend", ""))
    cls = backend_class(parse_backend(kind))
    if not issubclass(cls, CanAttach):
        raise UserError(f"scalelab fault works on labs whose backend can attach to a kept lab; "
                        f"lab {entry.name} runs on {kind}")
    backend = cls.attach(entry.state, entry.lab_dir or Path("."), entry.inventory())
    store = Store(Path(run.run_dir), Context(run_id=run.run_id, scenario="manual-faults",
                                             lab=entry.name))
    nem = Nemesis(backend, store.scoped())
    if args.action == "kill":
        nem.kill(names)  # recorded: the guest is lost for the rest of the run
    else:
        inject(backend, args.action, nem._guests(names), rate=args.rate)
    print(f"{args.action}: {' '.join(names) or 'all'} done")
    return 0
