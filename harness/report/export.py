"""Writing figures: PNG (embedded in the HTML as a data URI) and SVG (linked) per plot."""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

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


def slug(text: str) -> str:
    """A file-name-safe version of a title: ``test_rt[cpu] · write`` → ``test_rt-cpu-write``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.").lower()[:80] or "plot"


def save_figure(fig: Figure, out_dir: Path, name: str, title: str, caption: str = "") -> PlotFile:
    """Write ``<out_dir>/plots/<name>.png`` and ``.svg``; return what the template needs."""
    plots = out_dir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI)
    png = buf.getvalue()
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
    )
