"""The plots a run's data calls for, worked out from its rows (not counted by hand).

A report draws, per workload series (scenario without its ``n=`` id, and operation), a
distribution and a timeline, plus a scaling curve when the series was run at two N or more;
a bring-up timeline per (scenario, N), at most ``MAX_GANTTS`` of them (then only each
scenario's largest N); one metrics figure when some guest sampled a metric often enough to
make a series; and per scenario one results figure per agent metric (against N, or its spread
over guests at a single N), at most ``MAX_METRIC_PLOTS``.  Tests compare the report's figures
with this set, so that a plot that goes missing, or one drawn for nothing, fails — whatever the
number of plots happens to be.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.export import slug
from harness.report.plots import MIN_SERIES_SAMPLES
from harness.report.render import MAX_GANTTS
from harness.report.resultsection import MAX_METRIC_PLOTS
from harness.report.scenarios import base_scenario
from harness.store import METRICS_PARQUET, TIMINGS_PARQUET, load_samples


def series_plots(timings: pd.DataFrame) -> set[str]:
    wl = timings[timings["phase"] == "workload"]
    names: set[str] = set()
    bases = wl["scenario"].astype(str).map(base_scenario)
    for base in sorted(set(bases)):
        rows = wl[bases == base]
        ops = sorted(set(rows["op"].astype(str)))
        for op in ops:
            # The op is named only when a scenario measured several (the report's titles).
            name = slug(base if len(ops) == 1 else f"{base} · {op}")
            names |= {f"{name}-distribution", f"{name}-timeline"}
            if rows[rows["op"] == op]["n_guests"].nunique() >= 2:
                names.add(f"{name}-scaling")
    return names


def gantt_plots(timings: pd.DataFrame) -> set[str]:
    bu = timings[(timings["phase"] == "bringup") & (timings["guest"] != "")]
    groups = sorted({(base_scenario(str(s)), int(n))
                     for s, n in zip(bu["scenario"], bu["n_guests"], strict=True)})
    if len(groups) > MAX_GANTTS:
        largest = {base: max(n for b, n in groups if b == base) for base, _ in groups}
        groups = [(b, n) for b, n in groups if n == largest[b]][:MAX_GANTTS]
    return {slug(f"gantt-{base}-n{n}") for base, n in groups}


def metrics_plots(metrics: pd.DataFrame) -> set[str]:
    if metrics.empty:
        return set()
    longest = metrics.groupby(["scenario", "metric", "guest"], observed=True)["t"].nunique().max()
    return {"metrics"} if longest >= MIN_SERIES_SAMPLES else set()


def result_plots(metrics: pd.DataFrame) -> set[str]:
    if metrics.empty:
        return set()
    names: set[str] = set()
    bases = metrics["scenario"].astype(str).map(lambda s: base_scenario(s) if s else "(run)")
    for base in sorted(set(bases)):
        wanted = sorted(set(metrics.loc[bases == base, "metric"].astype(str)))
        assert len(wanted) <= MAX_METRIC_PLOTS, "the synthetic runs stay under the cap"
        names |= {f"result-{slug(base)}-{slug(m)}" for m in wanted}
    return names


def resource_plots(run_dir: Path) -> set[str]:
    """The host's figure when the run has samples; the guests' when some guest has any."""
    samples = load_samples(run_dir)
    if samples.empty:
        return set()
    guests = samples[(samples["guest"].fillna("") != "")
                     & samples["resource"].isin(["cpu_seconds", "net_tx_bytes", "net_rx_bytes"])]
    return {"resources-host"} | ({"resources-guests"} if len(guests) else set())


def plots_called_for(run_dir: Path) -> set[str]:
    """The plot names (``plots/<name>.png``, ``<figure id="plot-<name>">``) of a run."""
    timings = pd.read_parquet(run_dir / TIMINGS_PARQUET)
    metrics_path = run_dir / METRICS_PARQUET
    metrics = pd.read_parquet(metrics_path) if metrics_path.exists() else pd.DataFrame()
    return (series_plots(timings) | gantt_plots(timings) | metrics_plots(metrics)
            | result_plots(metrics) | resource_plots(run_dir))
