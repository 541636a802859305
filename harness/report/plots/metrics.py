"""Agents' metrics over time: which metrics are series, and one panel per metric."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from harness.report.plots.figure import new_figure, time_decorations
from harness.report.timeaxis import date_nums, setup_time_axis

MAX_METRICS = 6
MIN_SERIES_SAMPLES = 3
METRIC_BINS = 200
MAX_GUEST_LINES = 8
_SPREAD_COLOUR = "#1f77b4"


def _gapped(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN where samples pause (between scenarios) so the line breaks there."""
    if t.size < 3:
        return t, v
    dt_ = np.diff(t)
    typical = float(np.median(dt_))
    cut = np.flatnonzero(dt_ > max(5 * typical, 1e-9))
    if not cut.size:
        return t, v
    return np.insert(t, cut + 1, np.nan), np.insert(v, cut + 1, np.nan)


def time_series_metrics(metrics: pd.DataFrame) -> list[str]:
    """Metrics worth a plot over time: sampled at MIN_SERIES_SAMPLES distinct times or more
    by some guest in some scenario.

    Most used first, at most MAX_METRICS. A metric reported once per guest (a result, not a
    series) belongs in the table, where a lone dot on a time axis would say nothing.
    """
    if metrics.empty:
        return []
    # Per scenario: a sweep's one value per guest and N is a result at each N, not a series.
    # Distinct times: samples an agent printed without "t" all carry its end, one instant.
    per_guest = metrics.groupby(["scenario", "metric", "guest"], observed=True)["t"].nunique()
    longest = per_guest.groupby(level="metric", observed=True).max()
    total = per_guest.groupby(level="metric", observed=True).sum()
    series = total[longest >= MIN_SERIES_SAMPLES].sort_values(ascending=False, kind="stable")
    return [str(m) for m in series.index[:MAX_METRICS]]


def _metric_scale(m: pd.DataFrame) -> tuple[float, str]:
    """Scale and unit of one metric's values: its first stated unit, bytes shown in MiB."""
    units = [str(u) for u in m["unit"].unique() if u]
    unit = units[0] if units else ""
    if unit.lower() in {"b", "bytes"}:
        return 1.0 / 2**20, "MiB"
    return 1.0, unit


def _guest_lines(ax: Axes, m: pd.DataFrame, t: np.ndarray, v: np.ndarray) -> None:
    """Few guests: one line each, labelled by guest (the lab itself has no guest name)."""
    for guest in sorted(m["guest"].unique()):
        sel = (m["guest"] == guest).to_numpy()
        ax.plot(*_gapped(t[sel], v[sel]), ".-", ms=3, lw=1, label=str(guest) or "(lab)")


def _spread(ax: Axes, t: np.ndarray, v: np.ndarray, span: tuple[float, float], n: int) -> None:
    """Many guests: bin time and draw the median and p5–p95, not hundreds of lines."""
    edges = np.linspace(span[0], span[1], METRIC_BINS + 1)
    b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, METRIC_BINS - 1)
    q = pd.Series(v).groupby(b).quantile(np.array([0.05, 0.5, 0.95])).unstack()
    idx = q.index.to_numpy()
    mid = (edges[idx] + edges[idx + 1]) / 2
    # Pauses in sampling (between scenarios) become gaps, not straight lines.
    x, lo_q = _gapped(mid, q[0.05].to_numpy())
    _, hi_q = _gapped(mid, q[0.95].to_numpy())
    _, med = _gapped(mid, q[0.5].to_numpy())
    ax.fill_between(x, lo_q, hi_q, alpha=0.25, color=_SPREAD_COLOUR, lw=0, label="p5–p95")
    ax.plot(x, med, ".-", ms=2, color=_SPREAD_COLOUR, lw=1.2, label=f"median of {n} guests")


def _metric_panel(ax: Axes, m: pd.DataFrame, name: str, span: tuple[float, float]) -> None:
    """One metric's panel: its lines or spread, its name and unit, its legend."""
    scale, unit = _metric_scale(m)
    n_guests = len(m["guest"].unique())
    t = date_nums(m["t"])
    v = m["value"].to_numpy(dtype=float) * scale
    if n_guests <= MAX_GUEST_LINES:
        _guest_lines(ax, m, t, v)
    else:
        _spread(ax, t, v, span, n_guests)
    ax.set_ylabel(f"{name}\n({unit})" if unit else name, fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    handles, _labels = ax.get_legend_handles_labels()
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)


def _time_axis(ax: Axes, zone: dt.tzinfo, faults: pd.DataFrame, lost: pd.DataFrame,
               span: tuple[pd.Timestamp, pd.Timestamp]) -> None:
    """A panel's own time axis (a metric spans only its scenario: a run-wide axis would
    leave it a sliver), its faults and losses, their handles in its legend."""
    setup_time_axis(ax, zone, *span)
    extra: list[Patch] = time_decorations(ax, faults, lost, *span)
    if extra:
        ax.legend(handles=ax.get_legend_handles_labels()[0] + extra, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), fontsize=7)


def metrics_figure(
    metrics: pd.DataFrame,
    zone: dt.tzinfo,
    faults: pd.DataFrame,
    lost: pd.DataFrame,
    shown: Sequence[str],
) -> Figure:
    """One panel per metric in ``shown`` over its own time: a line per guest, or median and
    p5–p95."""
    metrics = metrics[metrics["metric"].isin(list(shown))]
    fig = new_figure(12.0, 0.6 + 2.6 * len(shown))
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, shown, strict=True):
        m = metrics[metrics["metric"] == name].sort_values("t")
        start, end = m["t"].min(), m["t"].max()
        lo, hi = date_nums(pd.Series([start, end]))
        _metric_panel(ax, m, name, (lo, hi))
        _time_axis(ax, zone, faults, lost, (start, end))
    fig.suptitle("agent metrics over time (each panel over its own span)")
    return fig
