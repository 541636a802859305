"""Operations that all start together (one agent run per guest, launched at once) drawn as
segments from start to end, one row per guest: the shape of such a scenario is when each
guest finished, which a dot per start (all in one column) cannot show."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.report.plots.figure import FAIL_COLOUR, n_colours, new_figure, time_decorations
from harness.report.timeaxis import date_nums, setup_time_axis

#: Operations of one N that begin within this share of their median duration start together.
TOGETHER = 0.25
#: ... and each guest ran at most this many of them.
MAX_OPS_PER_GUEST = 3
MAX_ROWS = 300


def starts_together(rows: pd.DataFrame) -> bool:
    """Whether at every N the operations began (nearly) at once, a few per guest."""
    if rows.empty:
        return False
    for _n, g in rows.groupby("n_guests", observed=True):
        spread = (g["start"].max() - g["start"].min()).total_seconds()
        if g.groupby("guest", observed=True).size().max() > MAX_OPS_PER_GUEST:
            return False
        if spread > TOGETHER * max(float(g["duration_s"].median()), 1e-6):
            return False
    return True


def _rows_shown(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(N, guest) rows in the order they ran, evenly sampled beyond MAX_ROWS."""
    keys = rows.groupby(["n_guests", "guest"], observed=True)["start"].min().reset_index()
    keys = keys.sort_values(["n_guests", "start"], kind="stable").reset_index(drop=True)
    total = len(keys)
    if total > MAX_ROWS:
        keys = keys.iloc[np.unique(np.linspace(0, total - 1, MAX_ROWS).round().astype(int))]
    return keys.reset_index(drop=True), total


def operations_figure(rows: pd.DataFrame, zone: dt.tzinfo, faults: pd.DataFrame,
                      lost: pd.DataFrame, title: str) -> Figure:
    """One row per (N, guest), a segment per operation from its start to its end."""
    keys, total = _rows_shown(rows)
    row_of = {(int(n), str(g)): i for i, (n, g) in enumerate(
        zip(keys["n_guests"], keys["guest"], strict=True))}
    pairs = list(zip(rows["n_guests"].astype(int), rows["guest"].astype(str), strict=True))
    y = np.array([row_of.get(p, -1) for p in pairs], dtype=float)
    shown = rows[y >= 0]
    y = y[y >= 0]
    fig = new_figure(12.0, float(np.clip(1.8 + 0.12 * len(keys), 3.2, 7.5)))
    ax = fig.add_subplot()
    x0, x1 = date_nums(shown["start"]), date_nums(shown["end"])
    ns = shown["n_guests"].to_numpy()
    ok = shown["ok"].to_numpy(dtype=bool)
    handles: list[Patch | Line2D] = []
    for n, colour in n_colours([int(v) for v in np.unique(ns)]).items():
        m = ok & (ns == n)
        ax.hlines(y[m], x0[m], x1[m], colors=[colour], lw=2.5 if len(keys) <= 80 else 1.2)
        handles.append(Line2D([], [], color=colour, lw=2.5, label=f"N={n}"))
    if (~ok).any():
        ax.hlines(y[~ok], x0[~ok], x1[~ok], colors=[FAIL_COLOUR], lw=2.5)
        handles.append(Line2D([], [], color=FAIL_COLOUR, lw=2.5, label="failed"))
    start, end = shown["start"].min(), shown["end"].max()
    setup_time_axis(ax, zone, start, end)
    handles += time_decorations(ax, faults, lost, start, end)
    ax.set_ylim(len(keys) - 0.5, -0.5)
    sampled = f", {len(keys)} of {total} evenly sampled" if len(keys) < total else ""
    ax.set_ylabel(f"guest (rows grouped by N{sampled})")
    if len(keys) <= 40:
        ax.set_yticks(np.arange(len(keys)), [str(g) for g in keys["guest"]], fontsize=7)
    ax.set_title(f"{title}: each operation from start to end (they start together)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
