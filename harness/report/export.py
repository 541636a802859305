"""Writing figures: PNG (embedded in the HTML as a data URI) and SVG (linked) per plot."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import ConciseDateFormatter
from matplotlib.figure import Figure

PLOTS_DIR = "plots"
PNG_DPI = 100


@dataclass(frozen=True)
class PlotFile:
    """A written plot; ``png_href``/``svg_href`` are relative to the report's directory."""

    name: str
    title: str
    caption: str
    png_data_uri: str
    png_href: str
    svg_href: str
    #: What each of its axes shows (labels, time axis, how much of the frame the data
    #: spans), as JSON: the page carries it on its <figure> for checks in a browser.
    axes: str = "[]"


def slug(text: str) -> str:
    """A file-name-safe version of a title: ``test_rt[cpu] · write`` → ``test_rt-cpu-write``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.").lower()[:80] or "plot"


def _data_fill(ax: Axes) -> tuple[float, float]:
    """The share of the axes' width and height that its data spans (display space, so log
    axes count as drawn)."""
    lim = ax.dataLim
    if not np.all(np.isfinite(lim.get_points())):
        return 0.0, 0.0
    corners = ax.transAxes.inverted().transform(ax.transData.transform(lim.get_points()))
    lo, hi = np.clip(corners.min(axis=0), 0, 1), np.clip(corners.max(axis=0), 0, 1)
    return float(hi[0] - lo[0]), float(hi[1] - lo[1])


def _x_label(ax: Axes) -> str:
    """The axes' own x label, else that of a panel sharing its x axis (named once)."""
    if ax.get_xlabel():
        return ax.get_xlabel()
    siblings = ax.get_shared_x_axes().get_siblings(ax)
    return next((a.get_xlabel() for a in siblings if a.get_xlabel()), "")


def axes_facts(fig: Figure) -> list[dict[str, Any]]:
    """Per visible axes: its labels, whether x is a time axis, and the data's fill."""
    out = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        fill_x, fill_y = _data_fill(ax)
        artists = len(ax.lines) + len(ax.collections) + len(ax.patches) + len(ax.images)
        out.append({"x": _x_label(ax), "y": ax.get_ylabel().replace("\n", " "),
                    "time": isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter),
                    "fill_x": round(fill_x, 3), "fill_y": round(fill_y, 3),
                    "artists": artists})
    return out


def save_figure(fig: Figure, out_dir: Path, name: str, title: str, caption: str = "") -> PlotFile:
    """Write ``<out_dir>/plots/<name>.png`` and ``.svg``; return what the template needs."""
    plots = out_dir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI)
    png = buf.getvalue()
    facts = json.dumps(axes_facts(fig), ensure_ascii=False)
    # Replaced, not rewritten: a live report's reader never sees half a file.
    tmp = plots / f".{name}.png.tmp"
    tmp.write_bytes(png)
    os.replace(tmp, plots / f"{name}.png")
    # The PNG pass placed everything; keep that layout instead of solving it again for the SVG.
    fig.set_layout_engine("none")
    # No date in the metadata: re-rendering the same run gives the same SVG bytes.
    fig.savefig(plots / f"{name}.svg", format="svg", metadata={"Date": None})
    return PlotFile(
        name=name,
        title=title,
        caption=caption,
        png_data_uri="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        png_href=f"{PLOTS_DIR}/{name}.png",
        svg_href=f"{PLOTS_DIR}/{name}.svg",
        axes=facts,
    )
