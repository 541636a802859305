"""The report's figures, drawn with matplotlib's object API (``Figure``, never pyplot).

Every function takes already-filtered rows and returns a :class:`Figure` with an Agg canvas.
Data is aggregated with pandas/numpy first and drawn as a few collections, never one artist per
row, so a million timing rows stay quick; scatter plots and Gantt rows are sampled when huge and
the figure says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from harness.report.summary import Knee
from harness.report.timeaxis import date_nums, fault_bands, lost_lines, setup_time_axis

BRINGUP_STEPS = ["created", "started", "tcp", "banner", "auth", "first_command"]
_STEP_COLOURS = ["#c7c7c7", "#9ecae1", "#4292c6", "#fdae6b", "#e6550d", "#31a354"]
_EXTRA_COLOURS = ["#756bb1", "#636363", "#bcbd22", "#17becf"]
FAIL_COLOUR = "#d62728"

MAX_GANTT_ROWS = 300  # beyond this a row is under 2 px: sample evenly by start order
MAX_SCATTER = 20_000
MIN_FAILURE_POINTS = 200
CDF_POINTS = 512
MAX_METRICS = 6
MIN_SERIES_SAMPLES = 3
METRIC_BINS = 200
MAX_GUEST_LINES = 8


def new_figure(width: float = 10.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _n_colours(ns: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """One colour per N, dark to light as N grows (viridis stays legible in greyscale)."""
    cmap = colormaps["viridis"]
    ordered = sorted(set(ns))
    if len(ordered) == 1:
        return {ordered[0]: cmap(0.35)}
    return {n: cmap(0.9 * i / (len(ordered) - 1)) for i, n in enumerate(ordered)}


def latency_unit(values: np.ndarray | pd.Series) -> tuple[float, str]:
    """Scale and unit for latencies: ms when everything is under a second."""
    arr = np.asarray(values, dtype=float)
    top = np.nanmax(arr) if arr.size and not np.all(np.isnan(arr)) else 0.0
    return (1000.0, "ms") if top < 1.0 else (1.0, "s")


def _maybe_log(ax: Axes, values: np.ndarray, axis: str = "y") -> None:
    """Log scale when the values span more than two decades (heavy tails hide otherwise)."""
    pos = values[np.isfinite(values) & (values > 0)]
    if pos.size and pos.max() / pos.min() > 100:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def n_axis(ax: Axes, ns: Sequence[int]) -> None:
    """N on a log2 axis with one tick per measured N (sweeps are usually powers of two)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator([float(n) for n in ns]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(ns), max(ns)
    ax.set_xlim(lo / 1.25, hi * 1.25)
    ax.set_xlabel("N (guests)")


def _in_window(rows: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Rows whose own [start, end] overlaps the span (a row without an end is ongoing)."""
    if rows.empty:
        return rows
    row_end = rows["end"].fillna(end)
    return rows[(rows["start"] <= end) & (row_end >= start)]


def _time_decorations(
    ax: Axes, faults: pd.DataFrame, lost: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> list[Patch]:
    handles = fault_bands(ax, _in_window(faults, start, end))
    lost_in = lost[(lost["start"] >= start) & (lost["start"] <= end)] if not lost.empty else lost
    return handles + lost_lines(ax, lost_in)


def _bar_verts(x0: np.ndarray, x1: np.ndarray, y: np.ndarray, half: float) -> list[np.ndarray]:
    lo, hi = y - half, y + half
    return list(
        np.stack([np.column_stack(p) for p in ((x0, lo), (x0, hi), (x1, hi), (x1, lo))], axis=1)
    )


def bringup_gantt(
    rows: pd.DataFrame,
    zone: dt.tzinfo,
    faults: pd.DataFrame,
    lost: pd.DataFrame,
    title: str,
) -> Figure:
    """One bar row per guest, one colour per bring-up step, guests ordered by when they began."""
    first = rows.groupby("guest", observed=True)["start"].min().sort_values(kind="stable")
    total = len(first)
    guests = first.index
    if total > MAX_GANTT_ROWS:
        # Even sampling by start order keeps the fastest and slowest guests and the shape.
        pick = np.unique(np.linspace(0, total - 1, MAX_GANTT_ROWS).round().astype(int))
        guests = guests[pick]
    row_of = pd.Series(np.arange(len(guests), dtype=float), index=guests)
    shown = rows[rows["guest"].isin(guests)]
    y = shown["guest"].map(row_of).to_numpy(dtype=float)
    x0, x1 = date_nums(shown["start"]), date_nums(shown["end"])

    n_rows = len(guests)
    fig = new_figure(10.0, float(np.clip(1.6 + 0.16 * n_rows, 3.0, 7.0)))
    ax = fig.add_subplot()
    half = 0.42 if n_rows <= 60 else 0.5  # dense charts: bars touch, no white lines between
    steps = [s for s in BRINGUP_STEPS if s in set(shown["op"])]
    steps += sorted(set(shown["op"]) - set(BRINGUP_STEPS))
    colours = dict(zip(BRINGUP_STEPS, _STEP_COLOURS, strict=True))
    extra = iter(_EXTRA_COLOURS * 4)
    handles: list[Patch | Line2D] = []
    ops = shown["op"].to_numpy()
    for step in steps:
        mask = ops == step
        colour = colours.get(step) or next(extra)
        ax.add_collection(
            PolyCollection(
                _bar_verts(x0[mask], x1[mask], y[mask], half),
                facecolors=colour,
                edgecolors="none",
                rasterized=n_rows > 60,
                zorder=2,
            )
        )
        handles.append(Patch(facecolor=colour, label=step))
    failed = ~shown["ok"].to_numpy(dtype=bool)
    if failed.any():
        ax.scatter(x1[failed], y[failed], marker="x", color=FAIL_COLOUR, s=18, zorder=3)
        handles.append(Line2D([], [], marker="x", color=FAIL_COLOUR, ls="", label="step failed"))

    start, end = shown["start"].min(), shown["end"].max()
    setup_time_axis(ax, zone, start, end)
    handles += _time_decorations(ax, faults, lost, start, end)
    ax.set_ylim(n_rows - 0.5, -0.5)  # first guest at the top, like a schedule
    if n_rows <= 40:
        ax.set_yticks(np.arange(n_rows), [str(g) for g in guests], fontsize=7)
        ax.set_ylabel("guest")
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}"))
        sampled = f"; {n_rows} of {total} shown, evenly sampled" if n_rows < total else ""
        ax.set_ylabel(f"guest rank by start{sampled}")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def scaling_figure(stats: pd.DataFrame, knee: Knee | None, title: str) -> Figure:
    """Latency percentiles, throughput with ideal linear scaling, and efficiency, all vs N."""
    g = stats.sort_values("n_guests")
    ns = [int(n) for n in g["n_guests"]]
    n = np.asarray(ns, dtype=float)
    fig = new_figure(12.0, 3.8)
    ax_lat, ax_thr, ax_eff = fig.subplots(1, 3)

    scale, unit = latency_unit(g[["p50", "p95", "p99"]].to_numpy())
    for col, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        ax_lat.plot(n, g[col].to_numpy(dtype=float) * scale, style, label=col)
    ax_lat.set_ylabel(f"latency ({unit})")
    ax_lat.set_title("latency percentiles")
    ax_lat.set_ylim(bottom=0)
    ax_lat.legend(fontsize=8)

    thr = g["throughput"].to_numpy(dtype=float)
    ax_thr.plot(n, g["ideal"].to_numpy(dtype=float), "--", color="#999999", label="ideal (linear)")
    ax_thr.plot(n, thr, "o-", color="#1f77b4", label="measured")
    if knee is not None and knee.n is not None:
        ax_thr.axvline(knee.n, color=FAIL_COLOUR, lw=1, ls=":", label=f"knee N={knee.n}")
    ax_thr.set_ylabel("throughput (ops/s)")
    ax_thr.set_title("throughput")
    ax_thr.set_ylim(bottom=0)
    ax_thr.legend(fontsize=8)

    eff = g["efficiency"].to_numpy(dtype=float)
    ax_eff.axhline(1.0, color="#999999", ls="--", lw=1)
    ax_eff.plot(n, eff, "o-", color="#2ca02c")
    ax_eff.set_ylabel("parallel efficiency")
    ax_eff.set_title("efficiency (measured / ideal)")
    finite = eff[np.isfinite(eff)]
    ax_eff.set_ylim(0, max(1.1, float(finite.max()) * 1.1) if finite.size else 1.1)

    for ax in (ax_lat, ax_thr, ax_eff):
        n_axis(ax, ns)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def distribution_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Per-guest spread (box per N of each guest's median) and the latency CDF per N."""
    good = rows[rows["ok"]]
    fig = new_figure(12.0, 3.8)
    ax_box, ax_cdf = fig.subplots(1, 2)
    if good.empty:
        for ax in (ax_box, ax_cdf):
            ax.text(0.5, 0.5, "no successful operations", ha="center", transform=ax.transAxes)
        fig.suptitle(title)
        return fig
    scale, unit = latency_unit(good["duration_s"].to_numpy())
    per_guest = good.groupby(["n_guests", "guest"], observed=True)["duration_s"].median() * scale
    ns = sorted(int(n) for n in per_guest.index.get_level_values(0).unique())
    colours = _n_colours(ns)
    ax_box.boxplot(
        [per_guest.loc[n].to_numpy() for n in ns],
        tick_labels=[str(n) for n in ns],
        flierprops={"marker": ".", "markersize": 3, "alpha": 0.6},
    )
    ax_box.set_xlabel("N (guests)")
    ax_box.set_ylabel(f"per-guest median latency ({unit})")
    ax_box.set_title("per-guest distribution (one point per guest)")
    ax_box.grid(axis="y", alpha=0.3)

    probs = np.linspace(0.0, 1.0, CDF_POINTS)
    durations = good["duration_s"].to_numpy(dtype=float) * scale
    by_n = good["n_guests"].to_numpy()
    lows: list[float] = []
    for n in ns:
        values = durations[by_n == n]
        # A CDF drawn from CDF_POINTS quantiles looks the same as one from every sample.
        ax_cdf.plot(np.quantile(values, probs), probs, color=colours[n], label=f"N={n}")
        lows.append(float(values.min()))
    ax_cdf.set_xlabel(f"latency ({unit})")
    ax_cdf.set_ylabel("fraction of operations ≤ latency")
    ax_cdf.set_title("CDF of operation latency")
    _maybe_log(ax_cdf, durations, axis="x")
    ax_cdf.set_ylim(0, 1.01)
    ax_cdf.grid(alpha=0.3)
    ax_cdf.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig


def _sample_ops(rows: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """At most MAX_SCATTER rows, drawn at random; (sample, failures over-represented?).

    Failures are sampled at their own rate but never below MIN_FAILURE_POINTS, so a rare
    failure does not vanish from the picture.
    """
    total = len(rows)
    if total <= MAX_SCATTER:
        return rows, False
    ok = rows["ok"].to_numpy(dtype=bool)
    bad_idx, ok_idx = np.flatnonzero(~ok), np.flatnonzero(ok)
    fair = round(MAX_SCATTER * bad_idx.size / total)
    rng = np.random.default_rng(0)  # fixed: re-rendering a run draws the same picture
    bad_idx = rng.choice(bad_idx, min(bad_idx.size, max(MIN_FAILURE_POINTS, fair)), replace=False)
    ok_idx = rng.choice(ok_idx, min(ok_idx.size, MAX_SCATTER - bad_idx.size), replace=False)
    return rows.iloc[np.sort(np.concatenate([ok_idx, bad_idx]))], bad_idx.size > fair


def latency_over_time(
    rows: pd.DataFrame,
    zone: dt.tzinfo,
    faults: pd.DataFrame,
    lost: pd.DataFrame,
    title: str,
) -> Figure:
    """Every operation at the time it began (sampled when huge); failures as red crosses."""
    fig = new_figure(12.0, 4.0)
    ax = fig.add_subplot()
    total = len(rows)
    sample, oversampled = _sample_ops(rows)
    scale, unit = latency_unit(sample.loc[sample["ok"], "duration_s"].to_numpy())
    x = date_nums(sample["start"])
    yv = sample["duration_s"].to_numpy(dtype=float) * scale
    ok = sample["ok"].to_numpy(dtype=bool)
    ns = sample["n_guests"].to_numpy()
    colours = _n_colours([int(n) for n in np.unique(ns)])
    big = len(sample) > 2000
    handles: list[Patch | Line2D] = []
    for n, colour in colours.items():
        m = ok & (ns == n)
        ax.scatter(
            x[m], yv[m], s=4 if big else 12, color=colour, alpha=0.6, lw=0, rasterized=big, zorder=2
        )
        handles.append(Line2D([], [], marker="o", ls="", color=colour, label=f"N={n}"))
    if (~ok).any():
        ax.scatter(
            x[~ok], yv[~ok], s=14, marker="x", color=FAIL_COLOUR, lw=0.8, zorder=3, rasterized=big
        )
        handles.append(Line2D([], [], marker="x", ls="", color=FAIL_COLOUR, label="failed"))
    start, end = rows["start"].min(), rows["end"].max()
    setup_time_axis(ax, zone, start, end)
    handles += _time_decorations(ax, faults, lost, start, end)
    _maybe_log(ax, yv)
    ax.set_ylabel(f"latency ({unit})")
    shown = ""
    if len(sample) < total:
        kept = "; failures over-sampled so rare ones show" if oversampled else ""
        shown = f" ({len(sample):,} of {total:,} operations, sampled{kept})"
    ax.set_title(f"{title}: latency over time{shown}")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


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
    """Metrics worth a plot over time: sampled at least MIN_SERIES_SAMPLES times by some guest.

    Most used first, at most MAX_METRICS. A metric reported once per guest (a result, not a
    series) belongs in the table, where a lone dot on a time axis would say nothing.
    """
    if metrics.empty:
        return []
    per_guest = metrics.groupby(["metric", "guest"], observed=True).size()
    longest = per_guest.groupby(level="metric", observed=True).max()
    total = per_guest.groupby(level="metric", observed=True).sum()
    series = total[longest >= MIN_SERIES_SAMPLES].sort_values(ascending=False, kind="stable")
    return [str(m) for m in series.index[:MAX_METRICS]]


def metrics_figure(
    metrics: pd.DataFrame,
    zone: dt.tzinfo,
    faults: pd.DataFrame,
    lost: pd.DataFrame,
    shown: Sequence[str],
) -> Figure:
    """One panel per metric in ``shown`` over time: a line per guest, or median and p5–p95."""
    metrics = metrics[metrics["metric"].isin(list(shown))]
    fig = new_figure(12.0, 0.6 + 2.3 * len(shown))
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    start, end = metrics["t"].min(), metrics["t"].max()
    lo, hi = date_nums(pd.Series([start, end]))
    for ax, name in zip(axes, shown, strict=True):
        m = metrics[metrics["metric"] == name].sort_values("t")
        units = [str(u) for u in m["unit"].unique() if u]
        unit = units[0] if units else ""
        scale = 1.0
        if unit.lower() in {"b", "bytes"}:
            scale, unit = 1.0 / 2**20, "MiB"
        guests = m["guest"].unique()
        t = date_nums(m["t"])
        v = m["value"].to_numpy(dtype=float) * scale
        if len(guests) <= MAX_GUEST_LINES:
            for guest in sorted(guests):
                sel = (m["guest"] == guest).to_numpy()
                ax.plot(*_gapped(t[sel], v[sel]), ".-", ms=3, lw=1, label=str(guest) or "(lab)")
        else:
            # Many guests: bin time and draw the spread, not hundreds of lines.
            edges = np.linspace(lo, hi, METRIC_BINS + 1)
            b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, METRIC_BINS - 1)
            q = pd.Series(v).groupby(b).quantile(np.array([0.05, 0.5, 0.95])).unstack()
            idx = q.index.to_numpy()
            mid = (edges[idx] + edges[idx + 1]) / 2
            # Pauses in sampling (between scenarios) become gaps, not straight lines.
            x, lo_q = _gapped(mid, q[0.05].to_numpy())
            _, hi_q = _gapped(mid, q[0.95].to_numpy())
            _, med = _gapped(mid, q[0.5].to_numpy())
            ax.fill_between(x, lo_q, hi_q, alpha=0.25, color="#1f77b4", lw=0, label="p5–p95")
            ax.plot(
                x, med, ".-", ms=2, color="#1f77b4", lw=1.2, label=f"median of {len(guests)} guests"
            )
        ax.set_ylabel(f"{name}\n({unit})" if unit else name, fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        handles, _labels = ax.get_legend_handles_labels()
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    for ax in axes:
        setup_time_axis(ax, zone, start, end)
        extra = _time_decorations(ax, faults, lost, start, end)
    if extra:
        axes[0].legend(
            handles=axes[0].get_legend_handles_labels()[0] + extra,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
        )
    for ax in axes[:-1]:
        ax.set_xlabel("")
    fig.suptitle("agent metrics over time")
    return fig
