"""QEMU bring-up benchmark: N VMs from the shared image to authenticated SSH.

Brings up a lab of N guests on the qemu backend (TCG unless told otherwise), REPEAT times,
and prints, per guest of the last run, the time from spawn to the guest's init (the
``booted`` phase row of ``timings.parquet``), the guest's own uptime at that moment, the
time to an authenticated SSH session, QEMU's resident memory and the used blocks of the
writable disk; then the time to the whole lab per run.  Goal on this 2-core host: 4 TCG
guests within 90 s.

    python bench/bench_qemu.py [--guests 4] [--repeat 1] [--options accel=tcg]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.config import build_config
from harness.preflight import preflight_lab
from harness.runinfo import machine_info
from harness.session import Session

PROJECT = Path(__file__).resolve().parent.parent
GOAL_S = {4: 90.0}


def lab_once(n: int, backend: str, reports: Path) -> tuple[float, pd.DataFrame, dict[str, str]]:
    """Seconds to every guest authenticated + first command; one row per guest."""
    cfg = build_config({"guests": str(n), "backend": backend, "reports_dir": str(reports)},
                       PROJECT)
    image = preflight_lab(cfg, n)
    t0 = time.monotonic()
    s = Session(cfg, image=image)
    try:
        lab = s.lab_up(n)
        elapsed = time.monotonic() - t0
        desc = {k: str(v) for k, v in lab.backend.describe().items()
                if k in ("accel", "net", "init", "memory", "kernel", "qemu")}
    finally:
        problems = s.finish(render=False)
    if problems:
        raise SystemExit(f"teardown problems: {problems}")
    t = pd.read_parquet(s.run_dir / "timings.parquet")
    t = t[t["phase"] == "bringup"]
    m = pd.read_parquet(s.run_dir / "metrics.parquet")
    start = t["start"].min()
    rows = []
    for guest, g in t.groupby("guest"):
        by_op = g.set_index("op")
        metric = m[m["guest"] == guest].set_index("metric")["value"]
        rows.append({
            "guest": guest,
            "boot_s": float(by_op["duration_s"].get("booted", float("nan"))),
            "uptime_s": float(metric.get("guest_uptime_at_init", float("nan"))),
            "ssh_s": (by_op.loc["auth", "end"] - start).total_seconds(),
            "memory_mib": float(metric.get("memory_bytes", float("nan"))) / 2**20,
            "disk_kib": float(metric.get("upper_bytes", float("nan"))) / 1024,
        })
    return elapsed, pd.DataFrame(rows), desc


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--guests", default="4", help="N, or a list: 1,2,4")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--options", default="accel=tcg",
                    help="qemu backend options, e.g. accel=tcg&memory=256M&init=lean")
    ap.add_argument("--reports-dir", default=None,
                    help="keep the runs here (default: a temporary directory, removed)")
    args = ap.parse_args()
    backend = f"qemu://?{args.options}"
    mi = machine_info()
    summary = []
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-qemu-") as tmp:
        reports = Path(args.reports_dir) if args.reports_dir else Path(tmp)
        for n in [int(x) for x in args.guests.split(",")]:
            times: list[float] = []
            for i in range(args.repeat):
                elapsed, per_guest, desc = lab_once(n, backend, reports)
                times.append(elapsed)
                print(f"N={n} run {i + 1}: all {n} guests authenticated in {elapsed:.1f} s",
                      file=sys.stderr)
            settings = ", ".join(f"{k}={v}" for k, v in desc.items())
            print(f"\n### {n} guests, qemu backend ({settings}) — "
                  f"{time.strftime('%Y-%m-%d')}, {mi['cpus']} CPUs ({mi['cpu_model']})\n")
            print("| guest | spawn → init (s) | guest uptime at init (s) | to SSH auth (s) "
                  "| QEMU RSS (MiB) | writable disk used (KiB) |")
            print("|---|---:|---:|---:|---:|---:|")
            for r in per_guest.itertuples():
                print(f"| {r.guest} | {r.boot_s:.1f} | {r.uptime_s:.1f} | {r.ssh_s:.1f} "
                      f"| {r.memory_mib:.0f} | {r.disk_kib:.0f} |")
            goal = GOAL_S.get(n)
            med = statistics.median(times)
            summary.append((n, med, min(times), max(times), goal))
    print("\n| N | to all authenticated, median (s) | min | max | goal |")
    print("|---:|---:|---:|---:|---|")
    for n, med, lo, hi, goal in summary:
        verdict = "—"
        if goal is not None:
            verdict = f"≤ {goal:.0f} s: " + ("met" if med <= goal else "missed")
        print(f"| {n} | {med:.1f} | {lo:.1f} | {hi:.1f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
