"""How long ``render_report`` takes on a big synthetic run (default: 1,000,000 timing rows).

    python bench/bench_report.py [--rows N] [--repeat K] [--tz ZONE] [--keep DIR]

Builds a run like a large sweep would leave behind (1024 guests at N = 64 … 1024, three workload
scenarios with log-normal latencies that grow with N, failures, faults, lost guests and agent
metrics), writes it as the store does (JSON-lines streams plus Parquet), then renders the report
``--repeat`` times and prints a Markdown table with the wall time of each rendering and the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from harness.report import render_report
from harness.store import (
    METRICS_PARQUET,
    METRICS_SCHEMA,
    METRICS_STREAM,
    TIMINGS_PARQUET,
    TIMINGS_SCHEMA,
    TIMINGS_STREAM,
)

RUN_ID = "20261125-194500-bench0"
T0 = pd.Timestamp("2026-11-25T19:45:00", tz="UTC").value
NS = (64, 128, 256, 512, 1024)
SCENARIOS = (
    ("test_ssh_roundtrip", "roundtrip", 0.004),
    ("test_cpu", "cpu", 0.050),
    ("test_client_server", "request", 0.012),
)
BRINGUP = (
    ("created", 0.003),
    ("started", 0.15),
    ("tcp", 0.01),
    ("banner", 0.03),
    ("auth", 0.04),
    ("first_command", 0.02),
)
ERRORS = (
    ("timeout", "no answer within 5.0 s"),
    ("refused", "connection refused"),
    ("exit", "agent exited with status 1"),
)
SEC = 1_000_000_000


def _frame(n: int, **cols: object) -> pd.DataFrame:
    df = pd.DataFrame(
        {k: (np.full(n, v) if np.isscalar(v) or v is None else v) for k, v in cols.items()}
    )
    return df


def _bringup(rng: np.random.Generator, scenario: str, n: int, t: int) -> tuple[pd.DataFrame, int]:
    """Consecutive bring-up steps per guest; starts staggered as a parallel bring-up would be."""
    steps = np.array([m for _, m in BRINGUP]) * (1 + 0.002 * n)
    dur = (rng.lognormal(0, 0.3, (n, len(BRINGUP))) * steps * SEC).astype(np.int64)
    start0 = t + (rng.random(n) * 0.002 * n * SEC).astype(np.int64)
    ends = start0[:, None] + np.cumsum(dur, axis=1)
    starts = ends - dur
    guests = np.repeat([f"guest-{i:04d}" for i in range(n)], len(BRINGUP))
    df = _frame(
        starts.size,
        scenario=scenario,
        n_guests=n,
        guest=guests,
        phase="bringup",
        op=np.tile([op for op, _ in BRINGUP], n),
        start=starts.ravel(),
        end=ends.ravel(),
        ok=True,
        error_class=None,
        error=None,
        exit_status=None,
    )
    return df, int(ends.max())


def _workload(
    rng: np.random.Generator, scenario: str, op: str, mean: float, n: int, k: int, t: int
) -> tuple[pd.DataFrame, int]:
    """``k`` back-to-back ops per guest; latency grows with N (contention) and has a heavy tail."""
    lat = mean * (1 + 0.25 * np.log2(n) + (n / 512) ** 2) * rng.lognormal(0, 0.35, (n, k))
    tail = rng.random((n, k)) < 0.01
    lat[tail] *= rng.pareto(2.0, int(tail.sum())) + 3
    dur = (lat * SEC).astype(np.int64)
    ends = t + np.cumsum(dur, axis=1)
    starts = ends - dur
    failed = rng.random(n * k) < 0.004
    kinds = rng.integers(0, len(ERRORS), n * k)
    guests = np.repeat([f"guest-{i:04d}" for i in range(n)], k)
    error_class = np.array([c for c, _ in ERRORS], dtype=object)[kinds]
    error_class[~failed] = None
    error = np.char.add(np.char.add(guests, ": "), np.array([m for _, m in ERRORS])[kinds])
    error = error.astype(object)
    error[~failed] = None
    df = _frame(
        n * k,
        scenario=scenario,
        n_guests=n,
        guest=guests,
        phase="workload",
        op=op,
        start=starts.ravel(),
        end=ends.ravel(),
        ok=~failed,
        error_class=error_class,
        error=error,
        exit_status=np.where(failed, 1, 0),
    )
    return df, int(ends.max())


def _faults(rng: np.random.Generator, scenario: str, n: int, t0: int, t1: int) -> pd.DataFrame:
    """A kill, a pause and an isolate inside the workload window; the killed guest is lost."""
    rows = []
    for op in ("kill", "pause", "isolate"):
        s = int(t0 + rng.random() * (t1 - t0) * 0.8)
        guest = f"guest-{int(rng.integers(0, n)):04d}"
        rows.append(dict(phase="fault", op=op, guest=guest, start=s, end=s + SEC // 2, ok=True))
        if op == "kill":
            rows.append(
                dict(
                    phase="lost",
                    op="lost",
                    guest=guest,
                    start=s + SEC // 10,
                    end=s + SEC // 10,
                    ok=False,
                    error_class="lost",
                    error="guest stopped answering",
                )
            )
    df = pd.DataFrame(rows)
    df["scenario"], df["n_guests"] = scenario, n
    return df


def synthesize(run_dir: Path, rows: int, seed: int = 0) -> int:
    """Write a run with about ``rows`` timing rows into ``run_dir``; return the exact count."""
    rng = np.random.default_rng(seed)
    bringup_rows = sum(NS) * len(BRINGUP) * len(SCENARIOS)
    k = max(1, (rows - bringup_rows) // (sum(NS) * len(SCENARIOS)))
    parts: list[pd.DataFrame] = []
    metrics: list[pd.DataFrame] = []
    t = T0
    for name, op, mean in SCENARIOS:
        for n in NS:
            scenario = f"{name}[n={n}]"
            bu, t = _bringup(rng, scenario, n, t)
            wl, end = _workload(rng, scenario, op, mean, n, k, t + SEC // 10)
            parts += [bu, wl, _faults(rng, scenario, n, t, end)]
            samples = np.linspace(t, end, 20).astype(np.int64)
            metrics.append(
                _frame(
                    n * samples.size,
                    scenario=scenario,
                    n_guests=n,
                    guest=np.repeat([f"guest-{i:04d}" for i in range(n)], samples.size),
                    t=np.tile(samples, n),
                    metric="cpu_util",
                    value=rng.uniform(20, 95, n * samples.size),
                    unit="%",
                )
            )
            t = end + SEC
    timings = pd.concat(parts, ignore_index=True)
    timings["duration_s"] = (timings["end"] - timings["start"]) / SEC
    _write(run_dir, timings, TIMINGS_SCHEMA, TIMINGS_STREAM, TIMINGS_PARQUET)
    _write(
        run_dir,
        pd.concat(metrics, ignore_index=True),
        METRICS_SCHEMA,
        METRICS_STREAM,
        METRICS_PARQUET,
    )
    info = {
        "run_id": RUN_ID,
        "report_tz": "America/El_Salvador",
        "guests": list(NS),
        "backend": {"name": "netns", "options": {}},
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    return len(timings)


def _write(run_dir: Path, df: pd.DataFrame, schema: pa.Schema, stream: str, parquet: str) -> None:
    """Both forms the store leaves: the JSON-lines stream (times as ns) and the Parquet file."""
    df = df.assign(run_id=RUN_ID, lab_host="lab-host-1")
    for name in schema.names:
        if name not in df.columns:
            df[name] = None
    df = df[schema.names]
    df.to_json(run_dir / stream, orient="records", lines=True)
    arrays = [
        pa.array(df[f.name].to_numpy(), type=pa.int64()).cast(f.type)
        if pa.types.is_timestamp(f.type)
        else pa.array(df[f.name], type=f.type, from_pandas=True)
        for f in schema
    ]
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), run_dir / parquet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="timing rows (default 1e6)")
    parser.add_argument("--repeat", type=int, default=3, help="renderings to time (default 3)")
    parser.add_argument("--tz", default="America/El_Salvador", help="report time zone")
    parser.add_argument("--keep", type=Path, help="write the run here and keep it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_report.") as tmp:
        run_dir = args.keep or Path(tmp) / RUN_ID
        run_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        count = synthesize(run_dir, args.rows)
        print(
            f"synthesized {count:,} timing rows in {time.perf_counter() - t:.1f} s ({run_dir})",
            file=sys.stderr,
        )
        seconds = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            render_report(run_dir, tz=args.tz)
            seconds.append(time.perf_counter() - t)
    print("| rows | repetitions | seconds per rendering | median (s) |")
    print("| ---: | ---: | --- | ---: |")
    runs = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"| {count:,} | {len(seconds)} | {runs} | {statistics.median(seconds):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
