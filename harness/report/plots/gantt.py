"""The bring-up timeline: one bar row per guest, one colour per bring-up step."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from harness.report.plots.figure import FAIL_COLOUR, new_figure, time_decorations
from harness.report.timeaxis import date_nums, setup_time_axis

BRINGUP_STEPS = ["created", "started", "tcp", "banner", "auth", "first_command"]
_STEP_COLOURS = ["#c7c7c7", "#9ecae1", "#4292c6", "#fdae6b", "#e6550d", "#31a354"]
_EXTRA_COLOURS = ["#756bb1", "#636363", "#bcbd22", "#17becf"]

MAX_GANTT_ROWS = 300  # beyond this a row is under 2 px: sample evenly by start order
_DENSE_ROWS = 60  # above this bars touch and are rasterized
_LABELLED_ROWS = 40  # up to this many rows are labelled by guest name


def _bar_verts(x0: np.ndarray, x1: np.ndarray, y: np.ndarray, half: float) -> list[np.ndarray]:
    lo, hi = y - half, y + half
    return list(
        np.stack([np.column_stack(p) for p in ((x0, lo), (x0, hi), (x1, hi), (x1, lo))], axis=1)
    )


def _guests_shown(rows: pd.DataFrame) -> tuple[pd.Index, int]:
    """The guests to draw, ordered by when they began, and how many there were in all."""
    first = rows.groupby("guest", observed=True)["start"].min().sort_values(kind="stable")
    total = len(first)
    guests = first.index
    if total > MAX_GANTT_ROWS:
        # Even sampling by start order keeps the fastest and slowest guests and the shape.
        pick = np.unique(np.linspace(0, total - 1, MAX_GANTT_ROWS).round().astype(int))
        guests = guests[pick]
    return guests, total


def _step_order(ops: set[str]) -> list[str]:
    """The bring-up steps present, in bring-up order, then any other ops by name."""
    return [s for s in BRINGUP_STEPS if s in ops] + sorted(ops - set(BRINGUP_STEPS))


def _draw_steps(ax: Axes, shown: pd.DataFrame, y: np.ndarray, n_rows: int) -> list[Patch | Line2D]:
    """One collection of bars per step, crosses where a step failed; the legend handles."""
    x0, x1 = date_nums(shown["start"]), date_nums(shown["end"])
    half = 0.42 if n_rows <= _DENSE_ROWS else 0.5  # dense charts: no white lines between bars
    colours = dict(zip(BRINGUP_STEPS, _STEP_COLOURS, strict=True))
    extra = iter(_EXTRA_COLOURS * 4)
    handles: list[Patch | Line2D] = []
    ops = shown["op"].to_numpy()
    for step in _step_order(set(shown["op"])):
        mask = ops == step
        colour = colours.get(step) or next(extra)
        ax.add_collection(
            PolyCollection(
                _bar_verts(x0[mask], x1[mask], y[mask], half),
                facecolors=colour,
                edgecolors="none",
                rasterized=n_rows > _DENSE_ROWS,
                zorder=2,
            )
        )
        handles.append(Patch(facecolor=colour, label=step))
    failed = ~shown["ok"].to_numpy(dtype=bool)
    if failed.any():
        ax.scatter(x1[failed], y[failed], marker="x", color=FAIL_COLOUR, s=18, zorder=3)
        handles.append(Line2D([], [], marker="x", color=FAIL_COLOUR, ls="", label="step failed"))
    return handles


def _guest_axis(ax: Axes, guests: pd.Index, total: int) -> None:
    """First guest at the top, like a schedule; names when few, ranks (and sampling) when many."""
    n_rows = len(guests)
    ax.set_ylim(n_rows - 0.5, -0.5)
    if n_rows <= _LABELLED_ROWS:
        ax.set_yticks(np.arange(n_rows), [str(g) for g in guests], fontsize=7)
        ax.set_ylabel("guest")
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}"))
        sampled = f"; {n_rows} of {total} shown, evenly sampled" if n_rows < total else ""
        ax.set_ylabel(f"guest rank by start{sampled}")


def bringup_gantt(
    rows: pd.DataFrame,
    zone: dt.tzinfo,
    faults: pd.DataFrame,
    lost: pd.DataFrame,
    title: str,
) -> Figure:
    """One bar row per guest, one colour per bring-up step, guests ordered by when they began."""
    guests, total = _guests_shown(rows)
    row_of = pd.Series(np.arange(len(guests), dtype=float), index=guests)
    shown = rows[rows["guest"].isin(guests)]
    y = shown["guest"].map(row_of).to_numpy(dtype=float)

    n_rows = len(guests)
    fig = new_figure(10.0, float(np.clip(1.6 + 0.16 * n_rows, 3.0, 7.0)))
    ax = fig.add_subplot()
    handles = _draw_steps(ax, shown, y, n_rows)
    start, end = shown["start"].min(), shown["end"].max()
    setup_time_axis(ax, zone, start, end)
    handles += time_decorations(ax, faults, lost, start, end)
    _guest_axis(ax, guests, total)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
