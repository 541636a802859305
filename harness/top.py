"""``scalelab top``: the latest resources of every guest of a lab that is up, busiest first,
for a person watching a kept lab (two samples ``interval`` seconds apart give the rates)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from harness.backends import backend_class, parse_backend
from harness.backends.base import CanAttach, Guest, HasTelemetry
from harness.errors import UserError
from harness.runs import Run
from harness.telemetry.sample import Sample


def _by_guest(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        out.setdefault(s.guest, {})[s.resource] = s.value
    return out


def top_lines(run: Run, interval: float) -> list[str]:
    """One line per guest of every lab of ``run`` whose backend can attach and sample."""
    rows: list[tuple[float, str]] = []
    labs: list[tuple[str, HasTelemetry, list[Guest], dict[str, dict[str, float]], float]] = []
    for entry in run.labs:  # a kept cluster lab's shards on this host are labs of their own
        if entry.is_cluster:
            continue
        cls = backend_class(parse_backend(str(entry.state.header.get("backend", ""))))
        if not (issubclass(cls, CanAttach) and issubclass(cls, HasTelemetry)):
            continue
        backend = cls.attach(entry.state, entry.lab_dir or Path("."), entry.inventory())
        if isinstance(backend, HasTelemetry):
            guests = backend.guests
            labs.append((entry.name, backend, guests, _by_guest(backend.sample(guests)),
                         time.monotonic()))
    time.sleep(interval if labs else 0)  # once for every lab: the rates share a window
    for lab, sampled, guests, first, t0 in labs:
        last, dt = _by_guest(sampled.sample(guests)), time.monotonic() - t0
        for name, now in last.items():
            then = first.get(name, {})

            def rate(resource: str, now: dict[str, float] = now,
                     then: dict[str, float] = then, dt: float = dt) -> float:
                return (now.get(resource, 0.0) - then.get(resource, 0.0)) / dt

            cpu = rate("cpu_seconds")
            net = (rate("net_tx_bytes") + rate("net_rx_bytes")) / 1024
            rows.append((cpu, f"{name:<20} {lab:<12} {cpu:>6.2f} "
                              f"{now.get('memory_bytes', 0) / 2**20:>9.1f} "
                              f"{now.get('processes', 0):>6.0f} {net:>10.1f}"))
    if not rows:
        raise UserError(f"run {run.run_id} has no lab whose guests can be sampled here")
    header = f"{'GUEST':<20} {'LAB':<12} {'CPU':>6} {'MEM MiB':>9} {'PROCS':>6} {'NET KiB/s':>10}"
    return [header] + [line for _, line in sorted(rows, key=lambda r: -r[0])]
