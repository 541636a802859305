"""Agent metrics against N: the aggregate (with ideal linear scaling for summed rates), the
parallel efficiency, and each N's spread over guests; a single N drawn as that N's
distribution over guests, which is what there is to see."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from harness.report.plots.figure import (
    FAIL_COLOUR,
    efficiency_panel,
    maybe_log,
    n_axis,
    n_colours,
    new_figure,
)
from harness.report.results import ResultSeries, agg_label, agg_quantile, is_rate, is_time

#: Up to this many guests a single N is drawn as one bar per guest, else as a histogram.
MAX_GUEST_BARS = 40


def value_scale(unit: str, values: np.ndarray) -> tuple[float, str]:
    """Scale and unit for a metric's axis: bytes in MiB, times in ms under a second."""
    u = unit.strip()
    if u.lower() in {"b", "bytes"}:
        return 1.0 / 2**20, "MiB"
    if u.lower() in {"b/s", "bytes/s"}:
        return 1.0 / 2**20, "MiB/s"
    if u == "s":
        finite = values[np.isfinite(values)]
        top = float(np.abs(finite).max()) if finite.size else 0.0
        return (1000.0, "ms") if top < 1.0 else (1.0, "s")
    return 1.0, u or "value"


def _aggregate_panel(ax: Axes, s: ResultSeries, scale: float, unit: str,
                     knee: int | None) -> None:
    g = s.rows
    n = g["n_guests"].to_numpy(dtype=float)
    if agg_quantile(s.agg) is not None:
        for col, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax.plot(n, g[col].to_numpy(dtype=float) * scale, style, label=f"{col} of samples")
        if s.agg not in {"p50", "p95", "p99"}:
            ax.plot(n, g["value"].to_numpy(dtype=float) * scale, "D-", label=s.agg)
    else:
        if s.agg == "sum" and is_rate(s.unit):
            ax.plot(n, g["ideal"].to_numpy(dtype=float) * scale, "--", color="#999999",
                    label="ideal (linear in guests)")
        elif s.agg != "sum":  # a sum's guests are in the spread panel, not around the sum
            ax.fill_between(n, g["lo"].to_numpy(dtype=float) * scale,
                            g["hi"].to_numpy(dtype=float) * scale, alpha=0.2,
                            color="#1f77b4", lw=0, label="guests' min–max")
        ax.plot(n, g["value"].to_numpy(dtype=float) * scale, "o-", color="#1f77b4",
                label=agg_label(s.agg, s.unit))
    if knee is not None:
        ax.axvline(knee, color=FAIL_COLOUR, lw=1, ls=":", label=f"knee N={knee}")
    ax.set_ylabel(f"{s.metric} ({unit})")
    ax.set_title(agg_label(s.agg, s.unit))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)


def _spread_panel(ax: Axes, s: ResultSeries, per_guest: pd.DataFrame, scale: float,
                  unit: str) -> None:
    """One box per N of the guests' own values, each guest a dot over it."""
    ns = s.ns
    colours = n_colours(ns)
    data = [per_guest.loc[per_guest["n_guests"] == n, "value"].to_numpy(dtype=float) * scale
            for n in ns]
    ax.boxplot(data, tick_labels=[str(n) for n in ns], showfliers=False)
    rng = np.random.default_rng(0)  # fixed: the same picture every rendering
    for i, (n, values) in enumerate(zip(ns, data, strict=True)):
        x = i + 1 + rng.uniform(-0.15, 0.15, values.size)
        ax.scatter(x, values, s=8, color=colours[n], alpha=0.7, lw=0, zorder=3)
    ax.set_xlabel("N (guests)")
    ax.set_ylabel(f"per guest ({unit})")
    ax.set_title("spread over guests (one dot per guest)")


def _single_n(fig: Figure, s: ResultSeries, per_guest: pd.DataFrame, title: str) -> Figure:
    """One N: the guests' values as bars (few guests) or a histogram (many)."""
    values = per_guest["value"].to_numpy(dtype=float)
    scale, unit = value_scale(s.unit, values)
    ax = fig.add_subplot()
    if len(values) <= MAX_GUEST_BARS:
        order = np.argsort(values)
        ax.barh(np.arange(len(values)), values[order] * scale, color="#1f77b4")
        ax.set_yticks(np.arange(len(values)),
                      [str(g) for g in per_guest["guest"].to_numpy()[order]], fontsize=7)
        ax.set_ylabel("guest")
        ax.set_xlabel(f"{s.metric} per guest ({unit})")
    else:
        ax.hist(values * scale, bins=min(40, max(5, len(values) // 3)), color="#1f77b4")
        ax.set_ylabel("guests (count)")
        ax.set_xlabel(f"{s.metric} per guest ({unit})")
        maybe_log(ax, values * scale, axis="x")
    total = s.rows["value"].iloc[0] * scale
    ax.set_title(f"N={s.ns[0]}: {agg_label(s.agg, s.unit)} = {total:,.4g} {unit} "
                 f"over {len(values)} guests; sweep N for a curve against N")
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def metric_result_figure(s: ResultSeries, per_guest: pd.DataFrame, knee: int | None,
                         title: str) -> Figure:
    """A metric against N (aggregate, efficiency for summed rates, spread over guests)."""
    if len(s.rows) < 2:
        return _single_n(new_figure(10.0, 3.6), s, per_guest, title)
    rate = s.agg == "sum" and is_rate(s.unit)
    fig = new_figure(12.0, 3.8)
    axes = fig.subplots(1, 3 if rate else 2)
    scale, unit = value_scale(s.unit, s.rows[["value", "hi", "p99"]].to_numpy(dtype=float))
    if is_time(s.unit) and unit == "value":
        unit = s.unit
    _aggregate_panel(axes[0], s, scale, unit, knee)
    if rate:
        efficiency_panel(axes[1], s.rows["n_guests"].to_numpy(dtype=float),
                         s.rows["efficiency"].to_numpy(dtype=float))
    for ax in axes[:-1]:
        n_axis(ax, s.ns)
    _spread_panel(axes[-1], s, per_guest, scale, unit)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
