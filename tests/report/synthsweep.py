"""A synthetic sweep with agent results and resource samples, recorded through the real Store.

Each N runs one ``load`` operation per guest, all started together; every guest reports
``requests_per_s`` once. Up to ``saturate_at`` guests each does ``per_guest_rate``; beyond it
the total stays at ``saturate_at * per_guest_rate`` (each guest gets its share). The host's two
cores are busy ``N / saturate_at`` of the time (all of it from ``saturate_at`` on) when
``cpu_bound``, else a fifth of the time whatever N: the same curve, once explained by the host
CPU and once by nothing the telemetry watches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness.store import Context, Recorder, Store

SEC = 1_000_000_000
T0 = datetime(2026, 11, 25, 19, 45, 0, tzinfo=UTC)
OP_SECONDS = 2.0
SAMPLE_EVERY = 0.5
CORES = ("cpu0", "cpu1")


@dataclass(frozen=True)
class SweepSpec:
    run_id: str = "sweep-1"
    ns: Sequence[int] = (1, 2, 4, 8, 16)
    saturate_at: int = 8
    per_guest_rate: float = 100.0
    cpu_bound: bool = True
    headline: str | None = "requests_per_s"
    success: float = 1.0  # share of guests whose operation succeeds
    rate_factor: float = 1.0  # scales every rate (a slower build)
    samples: bool = True
    report_tz: str = "America/El_Salvador"


def guest_rate(spec: SweepSpec, n: int) -> float:
    total = spec.per_guest_rate * min(n, spec.saturate_at)
    return total / n * spec.rate_factor


def _sample_line(run_id: str, t: int, guest: str, resource: str, value: float, unit: str,
                 kind: str, item: str = "") -> str:
    return json.dumps({"run_id": run_id, "lab": "default", "lab_host": "", "guest": guest,
                       "t": t, "resource": resource, "item": item, "kind": kind,
                       "value": value, "unit": unit}) + "\n"


def _host_samples(store: Store, spec: SweepSpec, t0: int, t1: int, util: float,
                  counters: dict[str, float]) -> None:
    """Samples every SAMPLE_EVERY s over [t0, t1] at ``util`` busy (counters carried on)."""
    step = int(SAMPLE_EVERY * SEC)
    lines = []
    for t in range(t0, t1 + 1, step):
        for core in CORES:
            counters[f"busy{core}"] += util * SAMPLE_EVERY
            counters[f"total{core}"] += SAMPLE_EVERY
            lines.append(_sample_line(spec.run_id, t, "", "cpu_busy_seconds",
                                      counters[f"busy{core}"], "s", "counter", core))
            lines.append(_sample_line(spec.run_id, t, "", "cpu_total_seconds",
                                      counters[f"total{core}"], "s", "counter", core))
        lines.append(_sample_line(spec.run_id, t, "", "load1", 2.0 * util, "", "gauge"))
        lines.append(_sample_line(spec.run_id, t, "", "memory_used_bytes", 3e9, "B", "gauge"))
        lines.append(_sample_line(spec.run_id, t, "", "memory_total_bytes", 8e9, "B", "gauge"))
    store.add_sample_lines("".join(lines))


def _one_n(rec: Recorder, spec: SweepSpec, n: int, t: int) -> int:
    ok_guests = round(n * spec.success)
    end = t + int(OP_SECONDS * SEC)
    for i in range(n):
        guest = f"g{i:03d}"
        ok = i < ok_guests
        rec.timing("load", t + i * 1_000_000, end + i * 3_000_000, guest=guest, ok=ok,
                   error_class=None if ok else "exit", error=None if ok else "exit status 1")
        if ok:
            rec.metric("requests_per_s", guest_rate(spec, n), unit="req/s", guest=guest,
                       t_ns=end)
            rec.metric("request_p50", 0.010 * max(1.0, n / spec.saturate_at), unit="s",
                       guest=guest, t_ns=end)
    return end + n * 3_000_000


def make_sweep(run_dir: Path, spec: SweepSpec | None = None) -> Path:
    """Record the sweep into ``run_dir`` and write its run.json; returns ``run_dir``."""
    spec = spec or SweepSpec()
    store = Store(run_dir, Context(run_id=spec.run_id))
    t = int(T0.timestamp() * SEC)
    counters = {f"{k}{c}": 0.0 for k in ("busy", "total") for c in CORES}
    tests = []
    for n in spec.ns:
        rec = store.scoped(scenario=f"test_load[n={n}]", n_guests=n)
        end = _one_n(rec, spec, n, t)
        util = min(1.0, n / spec.saturate_at) if spec.cpu_bound else 0.2
        if spec.samples:
            _host_samples(store, spec, t - SEC, end + SEC, util, counters)
        tests.append({"test": f"test_load[n={n}]", "n_guests": n, "outcome": "passed",
                      "headline": spec.headline})
        t = end + 3 * SEC
    store.finish()
    info = {"run_id": spec.run_id, "guests": list(spec.ns), "report_tz": spec.report_tz,
            "tests": tests, "config": {"sample_interval": SAMPLE_EVERY}}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    return run_dir
