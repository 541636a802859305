"""Figures against N: latency percentiles, throughput and efficiency; the latency distribution."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.report.plots.figure import (
    FAIL_COLOUR,
    efficiency_panel,
    latency_unit,
    maybe_log,
    n_axis,
    n_colours,
    new_figure,
)
from harness.report.summary import Knee

CDF_POINTS = 512


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

    efficiency_panel(ax_eff, n, g["efficiency"].to_numpy(dtype=float))

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
    colours = n_colours(ns)
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
    ax_cdf.set_ylabel("operations ≤ latency (fraction)")
    ax_cdf.set_title("CDF of operation latency")
    maybe_log(ax_cdf, durations, axis="x")
    ax_cdf.set_ylim(0, 1.01)
    ax_cdf.grid(alpha=0.3)
    ax_cdf.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig
