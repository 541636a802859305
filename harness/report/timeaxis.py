"""Time axes drawn in the report zone, with fault windows shaded behind the data (Jepsen style)."""

from __future__ import annotations

import datetime as dt

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.patches import Patch

from harness.report.zones import axis_label

_EPOCH = pd.Timestamp(0, tz="UTC")
_DAY = pd.Timedelta(days=1)

# Muted, distinct colours so bands stay behind the data without hiding it.
FAULT_COLOURS = {
    "kill": "#d62728",
    "pause": "#ff7f0e",
    "isolate": "#9467bd",
    "bandwidth": "#8c564b",
}
_OTHER_FAULT = "#7f7f7f"
LOST_COLOUR = "#d62728"


def _epoch_num() -> float:
    # Matplotlib's date epoch is configurable; shift by wherever the Unix epoch lands on it.
    unix = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return float(mdates.date2num(unix))  # type: ignore[no-untyped-call]


def date_nums(ts: pd.Series) -> np.ndarray:
    """Matplotlib date numbers of a tz-aware column, vectorised (no per-row datetime objects)."""
    return np.asarray((ts - _EPOCH) / _DAY, dtype=float) + _epoch_num()


def date_num(t: pd.Timestamp) -> float:
    return float((pd.Timestamp(t) - _EPOCH) / _DAY) + _epoch_num()


def setup_time_axis(ax: Axes, zone: dt.tzinfo, start: pd.Timestamp, end: pd.Timestamp) -> None:
    """Ticks and label in ``zone``; the label names the zone and its UTC offset(s)."""
    # matplotlib.dates has no annotations: the ignores below are about that, nothing else.
    locator = mdates.AutoDateLocator(tz=zone, minticks=4, maxticks=9)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(  # type: ignore[no-untyped-call]
            locator,
            tz=zone,
            # Runs last seconds to minutes: label ticks with the full clock time, not "00.5".
            formats=["%Y", "%b", "%d", "%H:%M", "%H:%M", "%H:%M:%S.%f"],
            zero_formats=["", "%Y", "%b", "%b-%d", "%H:%M", "%H:%M:%S"],
            offset_formats=["", "%Y", "%Y-%b", "%Y-%b-%d %Z", "%Y-%b-%d %Z", "%Y-%b-%d %Z"],
        )
    )
    lo, hi = date_num(start), date_num(end)
    pad = max((hi - lo) * 0.02, 0.001 / 86400)  # at least a millisecond either side
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(axis_label(zone, start, end))


def fault_bands(ax: Axes, faults: pd.DataFrame) -> list[Patch]:
    """Shade every fault window over the full height; one collection per fault kind.

    Returns legend handles. Faults without an end are shaded to the right edge of the axis.
    """
    handles: list[Patch] = []
    if faults.empty:
        return handles
    left, right = ax.get_xlim()
    # A half-second pause in a ten-minute run would be thinner than a pixel: widen to 0.3 %.
    min_width = (right - left) * 0.003
    for op, g in faults.groupby("op", sort=True, observed=True):
        x0 = date_nums(g["start"])
        x1 = np.where(g["end"].isna(), right, date_nums(g["end"]))
        x1 = np.maximum(x1, x0 + min_width)
        # x in data coordinates, y in axes coordinates (0..1): a band spans the whole height.
        verts = np.stack(
            [
                np.column_stack([x0, np.zeros_like(x0)]),
                np.column_stack([x0, np.ones_like(x0)]),
                np.column_stack([x1, np.ones_like(x0)]),
                np.column_stack([x1, np.zeros_like(x0)]),
            ],
            axis=1,
        )
        colour = FAULT_COLOURS.get(str(op), _OTHER_FAULT)
        ax.add_collection(
            PolyCollection(
                list(verts),
                facecolors=colour,
                edgecolors="none",
                alpha=0.15,
                transform=ax.get_xaxis_transform(),
                zorder=0,
            ),
            autolim=False,
        )
        handles.append(Patch(facecolor=colour, alpha=0.3, label=f"fault: {op}"))
    return handles


def lost_lines(ax: Axes, lost: pd.DataFrame) -> list[Patch]:
    """A thin vertical line where each guest was lost (one collection for all of them)."""
    if lost.empty:
        return []
    ax.vlines(
        date_nums(lost["start"]),
        0,
        1,
        transform=ax.get_xaxis_transform(),
        colors=LOST_COLOUR,
        linestyles="dashed",
        linewidth=0.8,
        zorder=1,
    )
    return [Patch(facecolor="none", edgecolor=LOST_COLOUR, linestyle="--", label="guest lost")]
