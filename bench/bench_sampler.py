"""What resource sampling costs: the sampler thread's CPU per round at N guests.

    python bench/bench_sampler.py [--guests 64,256,1024] [--rounds 20] [--repeat 3]

For each N a netns lab is brought up with the session's own sampler off, then a sampler is
driven round by round (``sample_once``) against it, its thread CPU time (``thread_time``)
measured per round; the slow round (a ``du`` of every copy-on-write layer, every 10th) is
counted apart.  The table gives the median CPU per round and what that is at a 1 s interval,
as a share of one core, and the interval the sampler's rule (``next_interval``) settles at for
that cost; the goal is at most 2 % of one core at 256 guests at 1 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import fmt, header, log, md_table, median

from harness.config import build_config
from harness.preflight import preflight_lab
from harness.session import Session
from harness.telemetry import sampler as sampler_mod
from harness.telemetry.sampler import Sampler

PROJECT = Path(__file__).resolve().parents[1]
GOAL_N, GOAL_SHARE = 256, 0.02


def rounds_cpu(n: int, rounds: int, reports: Path) -> tuple[list[float], list[float]]:
    """(CPU seconds of each fast round, of each slow round) on a lab of ``n`` guests."""
    cfg = build_config({"guests": str(n), "reports_dir": str(reports), "sample_interval": "0"},
                       PROJECT)
    s = Session(cfg, image=preflight_lab(cfg, n))
    fast: list[float] = []
    slow: list[float] = []
    try:
        s.lab_up(n)
        smp = Sampler(s.store, lambda: list(s.labs), 1.0)
        for i in range(rounds):
            c0 = time.thread_time()
            smp.sample_once()
            spent = time.thread_time() - c0
            (slow if i % sampler_mod.SLOW_EVERY == 0 else fast).append(spent)
    finally:
        s.finish(render=False)
    return fast, slow


def settle(cpu_per_round: float, start: float = 1.0) -> float:
    """The interval the sampler's own rule settles at for rounds of this CPU cost."""
    interval = start
    while (nxt := sampler_mod.next_interval(interval, cpu_per_round, cpu_per_round)) != interval:
        interval = nxt
    return interval


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", default="64,256,1024")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows, met, at_goal = [], True, ""
    # The heading (with the load average) is taken before the labs come up, not after.
    head = header("Resource sampling: the sampler's CPU per round", args.repeat,
                  f"{args.rounds} rounds per repetition; slow rounds (du) every "
                  f"{sampler_mod.SLOW_EVERY}")
    with tempfile.TemporaryDirectory(prefix="bench-sampler-") as tmp:
        for n in (int(x) for x in args.guests.split(",")):
            fast: list[float] = []
            slow: list[float] = []
            for r in range(args.repeat):
                log(f"sampler: {n} guests, repetition {r + 1}/{args.repeat}")
                f, s = rounds_cpu(n, args.rounds, Path(tmp))
                fast.append(median(f))
                slow.append(median(s))
            per_round = median(fast)
            share = per_round / 1.0  # at a 1 s interval
            if n == GOAL_N:
                met, at_goal = share <= GOAL_SHARE, f" ({share * 100:.2f} %)"
            settled = settle(per_round)
            rows.append((n, fmt(per_round * 1e3, 2, " ms"), fmt(median(slow) * 1e3, 1, " ms"),
                         fmt(share * 100, 2, " %"), fmt(per_round / n * 1e6, 1, " µs"),
                         f"{settled:g} s", fmt(per_round / settled * 100, 2, " %")))
    print(head)
    print(md_table(["guests", "CPU per round", "CPU per slow round", "of one core at 1 s",
                    "per guest", "interval it settles at", "of one core there"], rows))
    if at_goal:  # the goal's size was measured
        print(f"\n- the resource sampler costs at most {GOAL_SHARE:.0%} of one core at {GOAL_N} "
              f"guests at 1 s: **{'met' if met else 'NOT met'}**{at_goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
