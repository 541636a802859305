"""What every report figure shares: a new Agg figure, one colour per N, latency units, log and
N axes, and the fault bands and lost-guest lines drawn on time axes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from harness.report.timeaxis import date_num, fault_bands, lost_lines

FAIL_COLOUR = "#d62728"


def new_figure(width: float = 10.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def n_colours(ns: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
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


def maybe_log(ax: Axes, values: np.ndarray, axis: str = "y") -> None:
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


def time_decorations(
    ax: Axes, faults: pd.DataFrame, lost: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> list[Patch]:
    """Shade the faults and mark the lost guests that fall in [start, end]; their legend
    handles."""
    faults = _in_window(faults, start, end)
    if not faults.empty and "error" in faults:
        # A degradation's band is labelled with its parameters ("degrade: delay 100ms, ...").
        op, detail = faults["op"].astype(str), faults["error"].astype(object).fillna("").astype(str)
        faults = faults.assign(op=op.where(op != "degrade", op + ": " + detail))
    handles = fault_bands(ax, faults)
    if "error" in faults:  # ...and named inside the band, for plots that draw no legend
        marks = faults[faults["op"].astype(str).str.startswith("degrade: ")]
        for at, label in marks[["start", "op"]].drop_duplicates().itertuples(index=False):
            ax.text(date_num(at), 0.98, f" {label}", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=6, color="#555555", clip_on=True)
    lost_in = lost[(lost["start"] >= start) & (lost["start"] <= end)] if not lost.empty else lost
    return handles + lost_lines(ax, lost_in)


def efficiency_panel(ax: Axes, n: np.ndarray, eff: np.ndarray) -> None:
    """Parallel efficiency against N, with the ideal 1.0 dashed."""
    ax.axhline(1.0, color="#999999", ls="--", lw=1)
    ax.plot(n, eff, "o-", color="#2ca02c")
    ax.set_ylabel("parallel efficiency (measured / ideal)")
    ax.set_title("efficiency (measured / ideal)")
    finite = eff[np.isfinite(eff)]
    ax.set_ylim(0, max(1.1, float(finite.max()) * 1.1) if finite.size else 1.1)
