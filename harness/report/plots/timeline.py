"""Every operation's latency at the time it began, sampled when huge."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.report.plots.figure import (
    FAIL_COLOUR,
    latency_unit,
    maybe_log,
    n_colours,
    new_figure,
    time_decorations,
)
from harness.report.timeaxis import date_nums, setup_time_axis

MAX_SCATTER = 20_000
MIN_FAILURE_POINTS = 200


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
    colours = n_colours([int(n) for n in np.unique(ns)])
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
    handles += time_decorations(ax, faults, lost, start, end)
    maybe_log(ax, yv)
    ax.set_ylabel(f"latency ({unit})")
    shown = ""
    if len(sample) < total:
        kept = "; failures over-sampled so rare ones show" if oversampled else ""
        shown = f" ({len(sample):,} of {total:,} operations, sampled{kept})"
    ax.set_title(f"{title}: latency over time{shown}")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig
