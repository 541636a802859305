"""Cluster benchmark: N guests over K local lab hosts (Dask workers) against N on one host.

For each of REPEAT rounds, alternately brings up a one-host lab of N guests and a
``--cluster=local:K`` lab of the same N (K shards of N/K), then fans ``true`` out to every
guest ROUNDS times.  Prints a Markdown table of medians: bring-up (until every guest is
authenticated and answered a first command), fan-out round time and throughput (commands
per second), and the cluster's start-up (the K worker processes, paid once per process).

    python bench/bench_cluster.py [--guests 192] [--workers 3] [--repeat 3] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from harness.cluster import connect
from harness.cluster.plan import parse_cluster
from harness.config import build_config
from harness.preflight import preflight_lab
from harness.runinfo import machine_info
from harness.session import Session

PROJECT = Path(__file__).resolve().parent.parent


def one_run(n: int, cluster: str | None, rounds: int, reports: Path) -> tuple[float, float]:
    """(bring-up seconds, median fan-out round seconds) of one lab."""
    given = {"guests": str(n), "reports_dir": str(reports), "cluster": cluster}
    cfg = build_config(given, PROJECT)
    image = preflight_lab(cfg, n)
    s = Session(cfg, image=image)
    try:
        t0 = time.monotonic()
        lab = s.lab_up(n)
        bringup = time.monotonic() - t0
        fleet = lab.require_fleet()
        fleet.run("true")  # warm: first channel on every connection
        times = []
        for _ in range(rounds):
            t = time.monotonic()
            group = fleet.run("true")
            times.append(time.monotonic() - t)
            assert group.ok, group.failed
    finally:
        s.finish(render=False)
    return bringup, statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--guests", type=int, default=192)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    n, k = args.guests, args.workers
    cluster = f"local:{k}"
    t0 = time.monotonic()
    conn = connect.acquire(parse_cluster(cluster))  # held: every cluster run reuses it
    start = time.monotonic() - t0
    results: dict[str, list[tuple[float, float]]] = {"one": [], "cluster": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            for _ in range(args.repeat):
                results["one"].append(one_run(n, None, args.rounds, Path(tmp)))
                results["cluster"].append(one_run(n, cluster, args.rounds, Path(tmp)))
    finally:
        connect.release(conn)
    info = machine_info()
    load = os.getloadavg()[1]
    print(f"\n{n} guests, netns backend, {args.repeat} runs each, medians; "
          f"fan-out: `true` on every guest, {args.rounds} rounds; "
          f"{info.get('cpus', '?')} CPUs, 5-min load average {load:.1f} at the end. "
          f"Cluster start ({k} workers): {start:.1f} s.\n")
    print("| lab | bring-up (s) | fan-out round (ms) | fan-out (commands/s) |")
    print("|---|---:|---:|---:|")
    for key, label in (("one", f"1 host × {n}"), ("cluster", f"{k} lab hosts × {n // k}")):
        up = statistics.median(r[0] for r in results[key])
        rnd = statistics.median(r[1] for r in results[key])
        print(f"| {label} | {up:.2f} | {rnd * 1000:.0f} | {n / rnd:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
