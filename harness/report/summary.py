"""Numbers of a run: latency percentiles, throughput, parallel efficiency and the scaling knee.

Everything here is aggregated with pandas over the whole table, so a million rows cost a few
group-bys, not a Python loop per row.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report.scenarios import base_scenario, series_title

PERCENTILES = (0.50, 0.95, 0.99)
#: Throughput that grows less than this per doubling of N has stopped scaling.
KNEE_GROWTH = 0.10

SERIES_KEYS = ["base", "op"]
STAT_COLUMNS = [
    "base",
    "op",
    "title",
    "n_guests",
    "count",
    "ok",
    "failed",
    "success_rate",
    "p50",
    "p95",
    "p99",
    "max",
    "mean",
    "span_s",
    "throughput",
    "ideal",
    "efficiency",
]


def workload_rows(timings: pd.DataFrame) -> pd.DataFrame:
    return timings[timings["phase"] == "workload"]


def series_stats(timings: pd.DataFrame) -> pd.DataFrame:
    """One row per (scenario base, op, N) of the workload phase; latencies of successful ops.

    Throughput is successful ops per second of wall time, the wall time being the span of the
    rows of each pytest node summed over nodes (a repeated node does not count the gap between).
    """
    wl = workload_rows(timings)
    if wl.empty:
        return pd.DataFrame(columns=STAT_COLUMNS)
    keys = [*SERIES_KEYS, "n_guests"]
    counts = wl.groupby(keys, observed=True, sort=True).agg(count=("ok", "size"), ok=("ok", "sum"))
    spans = wl.groupby([*keys, "scenario"], observed=True).agg(
        start=("start", "min"), end=("end", "max")
    )
    span_s = (
        ((spans["end"] - spans["start"]).dt.total_seconds())
        .groupby(level=keys, observed=True)
        .sum()
    )
    good = wl.loc[wl["ok"], [*keys, "duration_s"]]
    grouped = good.groupby(keys, observed=True)["duration_s"]
    quant = grouped.quantile(np.array(PERCENTILES)).unstack()
    quant.columns = [f"p{round(q * 100)}" for q in PERCENTILES]
    stats = counts.join(quant).join(grouped.max().rename("max")).join(grouped.mean().rename("mean"))
    stats["span_s"] = span_s
    stats = stats.reset_index()
    stats["failed"] = stats["count"] - stats["ok"]
    stats["success_rate"] = stats["ok"] / stats["count"]
    stats["throughput"] = np.where(stats["span_s"] > 0, stats["ok"] / stats["span_s"], np.nan)
    ops_per_base = stats.groupby("base", observed=True)["op"].transform("nunique")
    stats["title"] = [
        series_title(b, o, int(k))
        for b, o, k in zip(stats["base"], stats["op"], ops_per_base, strict=True)
    ]
    first = stats.groupby(SERIES_KEYS, observed=True)[["n_guests", "throughput"]].transform("first")
    # Ideal linear scaling from the smallest N: throughput(N0) * N / N0.
    stats["ideal"] = first["throughput"] * stats["n_guests"] / first["n_guests"].clip(lower=1)
    stats["efficiency"] = stats["throughput"] / stats["ideal"]
    return stats[STAT_COLUMNS]


@dataclass(frozen=True)
class Knee:
    """Where throughput stops growing: ``n`` is None while it still grows at the largest N."""

    title: str
    n: int | None
    text: str
    single_n: bool = False


def find_knee(
    ns: Sequence[int], throughput: Sequence[float], growth: float = KNEE_GROWTH
) -> int | None:
    """The N beyond which throughput grows by at most ``growth`` per doubling of N."""
    pairs = [(n, t) for n, t in zip(ns, throughput, strict=True) if n > 0 and not math.isnan(t)]
    pairs.sort()
    for (n0, t0), (n1, t1) in itertools.pairwise(pairs):
        if t0 <= 0:
            continue
        per_doubling = (t1 / t0) ** (1.0 / math.log2(n1 / n0)) - 1.0
        if per_doubling <= growth + 1e-9:  # exactly 10 % must not fail on rounding
            return n0
    return None


def knees(stats: pd.DataFrame, growth: float = KNEE_GROWTH) -> list[Knee]:
    """The knee of every workload series, with a sentence saying what it means."""
    out: list[Knee] = []
    for title, g in stats.groupby("title", sort=False, observed=True):
        g = g.sort_values("n_guests")
        ns = [int(n) for n in g["n_guests"]]
        thr = [float(t) for t in g["throughput"]]
        pct = f"{growth:.0%}"
        if len(ns) < 2:
            out.append(Knee(str(title), None, f"N={ns[0]} only: {thr[0]:,.1f} ops/s, "
                            "the numbers below are for that N; sweep N (e.g. --guests=8,16,32) "
                            "for a scaling curve", True))
            continue
        n = find_knee(ns, thr, growth)
        if n is None:
            out.append(
                Knee(str(title), None, f"still scaling at N={ns[-1]} (> {pct} per doubling)")
            )
        else:
            out.append(Knee(str(title), n, f"throughput grows ≤ {pct} per doubling beyond N={n}"))
    return out


def bringup_rows(timings: pd.DataFrame) -> pd.DataFrame:
    """Per-guest bring-up steps (lab-wide rows such as a total, with no guest, left out)."""
    return timings[(timings["phase"] == "bringup") & (timings["guest"] != "")]


def bringup_stats(timings: pd.DataFrame) -> pd.DataFrame:
    """Per (lab, scenario, N) bring-up: per-guest time to ready and the wall time until all
    were. Labs are apart: two labs of one run never share a guest's rows."""
    bu = bringup_rows(timings)
    cols = [
        "lab",
        "scenario",
        "n_guests",
        "guests",
        "failed",
        "ready_p50",
        "ready_p95",
        "ready_max",
        "all_ready_s",
        "slowest_step",
    ]
    if bu.empty:
        return pd.DataFrame(columns=cols)
    keys = ["lab", "scenario", "n_guests"]
    per_guest = bu.groupby([*keys, "guest"], observed=True).agg(
        start=("start", "min"), end=("end", "max"), ok=("ok", "all")
    )
    per_guest["ready_s"] = (per_guest["end"] - per_guest["start"]).dt.total_seconds()
    ready = per_guest[per_guest["ok"]].groupby(level=keys, observed=True)["ready_s"]
    out = per_guest.groupby(level=keys, observed=True).agg(
        guests=("ok", "size"), start=("start", "min"), end=("end", "max")
    )
    out["failed"] = out["guests"] - per_guest.groupby(level=keys, observed=True)["ok"].sum()
    out["ready_p50"] = ready.median()
    out["ready_p95"] = ready.quantile(0.95)
    out["ready_max"] = ready.max()
    out["all_ready_s"] = (out["end"] - out["start"]).dt.total_seconds()
    step = bu.groupby([*keys, "op"], observed=True)["duration_s"].median().reset_index()
    slowest = step.loc[step.groupby(keys, observed=True)["duration_s"].idxmax()].set_index(keys)
    slowest_text = pd.Series(
        [
            f"{op} (median {d:.3f} s)"
            for op, d in zip(slowest["op"], slowest["duration_s"], strict=True)
        ],
        index=slowest.index,
    )
    out["slowest_step"] = slowest_text
    out = out.reset_index()
    # Lexical order would put "[n=128]" before "[n=64]": order by scenario base, then N.
    out["base"] = out["scenario"].map(lambda s: base_scenario(str(s))).astype(str)
    return out.sort_values(["base", "n_guests", "lab"], kind="stable")[cols]


@dataclass(frozen=True)
class GuestFailures:
    guest: str
    count: int
    first: pd.Timestamp
    example: str


@dataclass(frozen=True)
class FailureGroup:
    """All failed rows of one ``error_class``."""

    error_class: str
    count: int
    guests: int
    where: str
    examples: list[str]
    per_guest: list[GuestFailures]
    more_guests: int


def failures(
    timings: pd.DataFrame, max_guests: int = 10, max_examples: int = 3
) -> list[FailureGroup]:
    """Failed rows grouped by error class, most frequent first (lost-guest markers excluded)."""
    bad = timings[~timings["ok"] & ~timings["phase"].isin(["lost", "fault"])]
    if bad.empty:
        return []
    bad = bad.assign(
        error_class=bad["error_class"].astype(object).fillna("unclassified").astype(str),
        error=bad["error"].astype(object).fillna("").astype(str),
        guest=bad["guest"].astype(str),
    )
    groups: list[FailureGroup] = []
    for cls, g in bad.groupby("error_class", sort=False, observed=True):
        # The role says which side failed (the server's start, or the clients' load).
        role = g["role"].astype(object).fillna("").astype(str) if "role" in g else ""
        where = (g.assign(role=role).groupby(["phase", "op", "role"], observed=True).size()
                 .sort_values(ascending=False))
        where_text = ", ".join(
            f"{phase}/{op}{f' ({r})' if r else ''} ×{c}"
            for (phase, op, r), c in zip(where.index.tolist(), where.tolist(), strict=True)
        )
        examples = [e for e in g["error"].drop_duplicates().head(max_examples) if e]
        per = (
            g.groupby("guest", observed=True)
            .agg(count=("ok", "size"), first=("start", "min"), example=("error", "first"))
            .sort_values("count", ascending=False)
        )
        guests = [
            GuestFailures(str(guest), int(r["count"]), r["first"], str(r["example"]))
            for guest, r in per.head(max_guests).iterrows()
        ]
        groups.append(
            FailureGroup(
                str(cls),
                len(g),
                len(per),
                where_text,
                examples,
                guests,
                max(0, len(per) - max_guests),
            )
        )
    groups.sort(key=lambda f: -f.count)
    return groups


def lost_guests(timings: pd.DataFrame) -> pd.DataFrame:
    """Guests the run lost, when, and in which scenario."""
    lost = timings[timings["phase"] == "lost"]
    return lost[["guest", "scenario", "n_guests", "start", "error_class", "error"]].sort_values(
        "start"
    )


def fault_rows(timings: pd.DataFrame) -> pd.DataFrame:
    """Injected faults (their windows are drawn as bands behind the time plots)."""
    return timings[timings["phase"] == "fault"].sort_values("start")


def success_rate(timings: pd.DataFrame) -> float | None:
    """Share of successful workload operations; None when the run had none."""
    wl = workload_rows(timings)
    return float(wl["ok"].mean()) if len(wl) else None


def metric_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Agent metrics summarised per (scenario, metric, unit): guests, samples and spread."""
    cols = ["scenario", "metric", "unit", "guests", "samples", "min", "median", "mean", "max"]
    if metrics.empty:
        return pd.DataFrame(columns=cols)
    g = metrics.groupby(["scenario", "metric", "unit"], observed=True, sort=True)
    out = g.agg(
        guests=("guest", "nunique"),
        samples=("value", "size"),
        min=("value", "min"),
        median=("value", "median"),
        mean=("value", "mean"),
        max=("value", "max"),
    )
    out = out.reset_index()
    out["base"] = out["scenario"].map(lambda s: base_scenario(str(s))).astype(str)
    return out.sort_values(["base", "metric"], kind="stable")[cols]
