"""``compare_runs``: what changed between two runs, per scenario and N, with regressions flagged."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd
from matplotlib.figure import Figure

from harness.errors import UserError
from harness.report.export import PlotFile, save_figure, slug
from harness.report.plots.figure import latency_unit, n_axis, new_figure
from harness.report.regression import Regression, fmt_value
from harness.report.resultcompare import (
    ResultChange,
    compare_results,
    headline_figure,
    results_text,
)
from harness.report.rundata import RunData, load_run
from harness.report.summary import SERIES_KEYS, series_stats, workload_rows
from harness.report.templating import environment, write_page
from harness.report.zones import zone_for_run, zone_name

COMPARE_HTML = "compare.html"
COMPARE_TEXT = "compare.txt"

#: metric → True when a larger value is worse.
METRICS: dict[str, bool] = {"p50": True, "p95": True, "throughput": False}
#: The share of successful operations: a drop beyond the threshold is a regression too,
#: and so is a smaller one that chance does not explain (``ALPHA``).
SUCCESS = "success_rate"
#: Chance, tested on the two runs' operations: a success-rate drop whose one-sided Fisher
#: exact test on the counts gives ``p`` below this is a regression whatever its size
#: (100 % → 91 % of 200 operations is −9 %, under a 10 % threshold, and p ≈ 1e-6; 64/64 →
#: 63/64 is p = 0.5); a latency or throughput change beyond the threshold is one only when
#: the latencies of B's successful operations are slower than A's beyond it (one-sided
#: Mann–Whitney U): three operations a side cannot show a 30 % change is not noise.
ALPHA = 0.05

__all__ = ["METRICS", "CompareResult", "CompareRow", "Regression", "compare_runs"]


@dataclass(frozen=True)
class CompareRow:
    """One (scenario, op, N) in either run; values are None where a run lacks it."""

    scenario: str
    op: str
    n_guests: int
    count_a: int | None
    count_b: int | None
    success_a: float | None
    success_b: float | None
    a: dict[str, float | None]
    b: dict[str, float | None]
    change: dict[str, float | None]
    flagged: tuple[str, ...] = ()
    #: Metrics beyond the threshold that chance explains (not regressions).
    chance: tuple[str, ...] = ()

    @property
    def presence(self) -> str:
        if self.count_a is None:
            return "only in B"
        return "only in A" if self.count_b is None else "both"


@dataclass
class CompareResult:
    """What :func:`compare_runs` found; ``regressions`` empty means B is no worse than A."""

    run_a: Path
    run_b: Path
    threshold: float
    regressions: list[Regression]
    rows: list[CompareRow]
    results: list[ResultChange]
    text: str
    html_path: Path
    text_path: Path
    plots: list[PlotFile] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.regressions


def _num(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


def relative_change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return (after - before) / before


def is_worse(metric: str, change: float | None, threshold: float) -> bool:
    """Latency up, or throughput down, by more than ``threshold`` (a fraction)."""
    if change is None:
        return False
    return change > threshold if METRICS[metric] else change < -threshold


#: A series: (scenario base, op, N).
SeriesKey = tuple[str, str, int]


def slower_p(timings_a: pd.DataFrame, timings_b: pd.DataFrame) -> dict[SeriesKey, float]:
    """Per series in both runs: how likely B's successful operations would be this much
    slower than A's by chance alone (one-sided Mann–Whitney U on their latencies)."""
    from scipy.stats import mannwhitneyu

    keys = [*SERIES_KEYS, "n_guests"]

    def latencies(timings: pd.DataFrame) -> dict[SeriesKey, Any]:
        wl = workload_rows(timings)
        good = wl.loc[wl["ok"], [*keys, "duration_s"]].groupby(keys, observed=True)
        out: dict[SeriesKey, Any] = {}
        for key, g in good["duration_s"]:
            base, op, n = cast(tuple[Any, Any, Any], key)  # grouped by three columns
            out[(str(base), str(op), int(n))] = g.to_numpy(dtype=float)
        return out

    a, b = latencies(timings_a), latencies(timings_b)
    return {k: float(mannwhitneyu(b[k], a[k], alternative="greater").pvalue)
            for k in a.keys() & b.keys() if len(a[k]) and len(b[k])}


def success_drop_p(ok_a: int, count_a: int, ok_b: int, count_b: int) -> float:
    """How likely B's operations would fail at least this much more often than A's by
    chance alone (one-sided Fisher exact test on the 2×2 table of successes and failures)."""
    from scipy.stats import fisher_exact  # only ``compare`` needs it (0.5 s to import)

    table = [[ok_a, count_a - ok_a], [ok_b, count_b - ok_b]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def success_regression(title: str, n: int, r: Mapping[Hashable, Any],
                       threshold: float) -> Regression | None:
    """A merged row's success-rate regression: a drop beyond ``threshold``, or a drop too
    unlikely by chance (``ALPHA``); None if neither."""
    sa, sb = _num(r["success_rate_a"]), _num(r["success_rate_b"])
    change = relative_change(sa, sb)
    if sa is None or sb is None or change is None or sb >= sa:
        return None
    p = success_drop_p(int(r["ok_a"]), int(r["count_a"]), int(r["ok_b"]), int(r["count_b"]))
    if change < -threshold or p < ALPHA:
        return Regression(title, n, SUCCESS, sa, sb, change, p_value=p)
    return None


def compare_stats(
    stats_a: pd.DataFrame, stats_b: pd.DataFrame, threshold: float,
    slower: Mapping[SeriesKey, float] | None = None,
) -> tuple[list[CompareRow], list[Regression]]:
    """Join two :func:`series_stats` tables on (scenario base, op, N) and flag regressions
    (``slower``: :func:`slower_p` of the runs; without it the threshold alone decides)."""
    keys = ["base", "op", "n_guests"]
    cols = [*keys, "title", "count", "ok", "success_rate", *METRICS]
    merged = stats_a[cols].merge(
        stats_b[cols], on=keys, how="outer", suffixes=("_a", "_b"), indicator=True
    )
    merged = merged.sort_values(keys)
    rows: list[CompareRow] = []
    regressions: list[Regression] = []
    for r in merged.to_dict(orient="records"):
        title = str(r["title_b"] if isinstance(r["title_b"], str) else r["title_a"])
        n = int(r["n_guests"])
        a = {m: _num(r[f"{m}_a"]) for m in METRICS}
        b = {m: _num(r[f"{m}_b"]) for m in METRICS}
        change = {m: relative_change(a[m], b[m]) for m in METRICS}
        beyond = tuple(m for m in METRICS if is_worse(m, change[m], threshold))
        p = (slower or {}).get((str(r["base"]), str(r["op"]), n))
        chance = beyond if p is not None and p >= ALPHA else ()
        flagged = tuple(m for m in beyond if m not in chance)
        for m in flagged:
            regressions.append(Regression(title, n, m, a[m] or 0.0, b[m] or 0.0, change[m] or 0.0,
                                          p_value=p))
        in_a, in_b = r["_merge"] != "right_only", r["_merge"] != "left_only"
        sa, sb = _num(r["success_rate_a"]), _num(r["success_rate_b"])
        if (worse := success_regression(title, n, r, threshold)) is not None:
            flagged = (*flagged, SUCCESS)
            regressions.append(worse)
        rows.append(
            CompareRow(
                scenario=title,
                op=str(r["op"]),
                n_guests=n,
                count_a=int(r["count_a"]) if in_a else None,
                count_b=int(r["count_b"]) if in_b else None,
                success_a=sa if in_a else None,
                success_b=sb if in_b else None,
                a=a,
                b=b,
                change=change,
                flagged=flagged,
                chance=chance,
            )
        )
    return rows, regressions


def compare_text(
    run_a: RunData,
    run_b: RunData,
    rows: list[CompareRow],
    regressions: list[Regression],
    threshold: float,
    results: list[ResultChange],
) -> str:
    """The plain-text table printed by ``scalelab compare`` and written to compare.txt."""
    lines = [
        f"scalelab compare: A = {run_a.run_id} ({run_a.run_dir})",
        f"                  B = {run_b.run_id} ({run_b.run_dir})",
        f"regression threshold: {threshold:.0%}: latency up or throughput down beyond it and "
        f"beyond chance (p < {ALPHA:g}, Mann–Whitney U on the latencies); success rate down "
        "beyond it or beyond chance (Fisher exact); an agent's rate down beyond it",
        "",
    ]
    head = (
        f"{'scenario':<34} {'N':>5}  {'p50 A → B':<26} {'p95 A → B':<26} {'ops/s A → B':<30} flag"
    )
    lines += [head, "-" * len(head)]
    for row in rows:
        cells = []
        for m in METRICS:
            ch = row.change[m]
            delta = f" ({ch * 100:+.0f}%)" if ch is not None else ""
            cells.append(f"{fmt_value(m, row.a[m])} → {fmt_value(m, row.b[m])}{delta}")
        flag = " ".join(([f"WORSE {','.join(row.flagged)}"] if row.flagged else [])
                        + ([f"chance? {','.join(row.chance)}"] if row.chance else []))
        if row.presence != "both":
            flag = row.presence
        lines.append(
            f"{row.scenario[:34]:<34} {row.n_guests:>5}  {cells[0]:<26} {cells[1]:<26} "
            f"{cells[2]:<30} {flag}".rstrip()
        )
    lines += results_text(results)
    lines.append("")
    if regressions:
        lines.append(f"{len(regressions)} regression(s) beyond {threshold:.0%} and beyond chance "
                     f"(p < {ALPHA:g}), or success-rate drops beyond chance:")
        lines += [f"  {r}" for r in regressions]
    else:
        lines.append(f"no regression beyond {threshold:.0%}")
    return "\n".join(lines) + "\n"


def compare_figure(a: pd.DataFrame, b: pd.DataFrame, title: str) -> Figure | None:
    """p50 and throughput vs N of both runs, side by side (None when neither has data)."""
    if a.empty and b.empty:
        return None
    fig = new_figure(11.0, 3.4)
    ax_lat, ax_thr = fig.subplots(1, 2)
    scale, unit = latency_unit(pd.concat([a["p50"], b["p50"]]).to_numpy(dtype=float))
    ns: set[int] = set()
    for label, g, style in (("A", a, "o--"), ("B", b, "s-")):
        if g.empty:
            continue
        g = g.sort_values("n_guests")
        n = g["n_guests"].to_numpy(dtype=float)
        ns |= {int(x) for x in n}
        ax_lat.plot(n, g["p50"].to_numpy(dtype=float) * scale, style, label=f"{label} p50")
        ax_thr.plot(n, g["throughput"].to_numpy(dtype=float), style, label=label)
    ax_lat.set_ylabel(f"p50 latency ({unit})")
    ax_thr.set_ylabel("throughput (ops/s)")
    for ax in (ax_lat, ax_thr):
        n_axis(ax, sorted(ns))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: A (dashed) vs B (solid)")
    return fig


def _plots(stats_a: pd.DataFrame, stats_b: pd.DataFrame, results: list[ResultChange],
           out: Path) -> list[PlotFile]:
    """The harness operations of both runs against N, then each scenario's headline."""
    plots: list[PlotFile] = []
    titles = sorted(set(stats_a["title"]) | set(stats_b["title"]))
    for title in titles:
        fig = compare_figure(
            stats_a[stats_a["title"] == title], stats_b[stats_b["title"] == title], str(title)
        )
        if fig is not None:
            plots.append(save_figure(fig, out, f"compare-{slug(str(title))}", str(title)))
    for scenario in sorted({c.scenario for c in results if c.headline}):
        head = headline_figure(results, scenario)
        if head is not None:
            plots.append(save_figure(head, out, f"compare-headline-{slug(scenario)}",
                                     f"{scenario} headline"))
    return plots


def compare_runs(run_a: Path, run_b: Path, out_dir: Path, threshold: float = 0.10) -> CompareResult:
    """Compare run B against run A; write ``compare.html`` and ``compare.txt`` into ``out_dir``.

    A (scenario, N) regresses when its p50 or p95 latency grows, or its throughput or success
    rate shrinks, by more than ``threshold`` (0.10 = 10 %) and beyond chance (``ALPHA``); so
    does an agent metric (its headline first) whose rate drops or whose latency rises by more
    than that.
    """
    if not 0 <= threshold < 10:
        raise UserError(f"compare threshold must be a fraction such as 0.1, got {threshold}")
    a = load_run(Path(run_a), rebuild_parquet=False)
    b = load_run(Path(run_b), rebuild_parquet=False)
    stats_a, stats_b = series_stats(a.timings), series_stats(b.timings)
    rows, regressions = compare_stats(stats_a, stats_b, threshold,
                                      slower_p(a.timings, b.timings))
    results, result_regressions = compare_results(a, b, threshold)
    # The headlines' regressions first: they are what the scenarios are about.
    regressions = [r for r in result_regressions if r.headline] + regressions + [
        r for r in result_regressions if not r.headline]
    text = compare_text(a, b, rows, regressions, threshold, results)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text_path = out / COMPARE_TEXT
    text_path.write_text(text, encoding="utf-8")
    plots = _plots(stats_a, stats_b, results, out)
    zone = zone_for_run(None, b.info)
    html_path = write_page(
        environment(zone),
        "compare.html.j2",
        out / COMPARE_HTML,
        run_a=a,
        run_b=b,
        threshold=threshold,
        alpha=ALPHA,
        rows=rows,
        regressions=regressions,
        results=results,
        metrics=list(METRICS),
        plots=plots,
        generated=dt.datetime.now(dt.UTC),
        zone=zone_name(zone),
    )
    return CompareResult(
        run_a=a.run_dir,
        run_b=b.run_dir,
        threshold=threshold,
        regressions=regressions,
        rows=rows,
        results=results,
        text=text,
        html_path=html_path,
        text_path=text_path,
        plots=plots,
    )
