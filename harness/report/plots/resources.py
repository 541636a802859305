"""What the host and the guests spent over the run (the seed's cacti graphs): the host's CPU,
memory and load, and each guest's CPU and traffic as median with a p5–p95 band plus the
busiest guests; scenario boundaries marked on the time axis, faults shaded behind."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from harness.report.plots.figure import new_figure, time_decorations
from harness.report.resources import (
    guest_rates,
    host_cpu_percent,
    host_gauge,
    host_memory_percent,
    lab_hosts,
)
from harness.report.timeaxis import date_num, date_nums, setup_time_axis

BUSIEST = 5
_BAND = "#1f77b4"


def scenario_marks(ax: Axes, spans: pd.DataFrame) -> None:
    """A thin line where each scenario began, named at the top of the axes."""
    for start, label in zip(spans["start"], spans["label"], strict=True):
        x = date_num(start)
        ax.axvline(x, color="#999999", lw=0.6, ls=":")
        ax.text(x, 1.0, f" {label}", transform=ax.get_xaxis_transform(), rotation=90,
                va="top", ha="left", fontsize=6, color="#555555", clip_on=True)


def _decorate(ax: Axes, zone: dt.tzinfo, span: tuple[pd.Timestamp, pd.Timestamp],
              faults: pd.DataFrame, lost: pd.DataFrame, spans: pd.DataFrame) -> None:
    setup_time_axis(ax, zone, *span)
    time_decorations(ax, faults, lost, *span)
    scenario_marks(ax, spans)
    ax.grid(True, alpha=0.3)
    spec = ax.get_subplotspec()
    if spec is not None and not spec.is_last_row():
        ax.set_xlabel("")  # the panels share the time axis: it is named once, at the bottom


def _load(df: pd.DataFrame, lab_host: str) -> pd.Series:
    return host_gauge(df, "load1", lab_host)


def host_figure(samples: pd.DataFrame, zone: dt.tzinfo, faults: pd.DataFrame,
                lost: pd.DataFrame, spans: pd.DataFrame) -> Figure:
    """Host CPU (% of all cores), memory in use (%) and load over the whole run."""
    span = (samples["t"].min(), samples["t"].max())
    fig = new_figure(10.0, 6.0)
    axes = fig.subplots(3, 1, sharex=True)
    hosts = lab_hosts(samples)  # a cluster's lab hosts each sampled themselves
    panels: list[tuple[Callable[[pd.DataFrame, str], pd.Series], str, tuple[int, int] | None]]
    panels = [(host_cpu_percent, "CPU (% of all cores)", (0, 105)),
              (host_memory_percent, "memory in use (%)", (0, 105)),
              (_load, "load (1 min)", None)]
    for ax, (series_of, label, ylim) in zip(axes, panels, strict=True):
        for i, h in enumerate(hosts):
            s = series_of(samples, h)
            if len(s):
                ax.plot(date_nums(pd.Series(s.index)), s.to_numpy(), lw=1.0,
                        color=_BAND if i == 0 else None, label=h or "this host")
        ax.set_ylabel(label)
        if ylim:
            ax.set_ylim(*ylim)
        if len(hosts) > 1:
            ax.legend(fontsize=7, loc="upper right", ncols=2)
        _decorate(ax, zone, span, faults, lost, spans)
    axes[0].set_title("lab host" if len(hosts) == 1 else "this host and the lab hosts")
    return fig


def _spread(ax: Axes, rates: pd.DataFrame, scale: float, unit: str) -> None:
    """Median over guests with a p5–p95 band, and the busiest guests as lines."""
    q = rates.groupby("t")["rate"].quantile(np.array([0.05, 0.5, 0.95])).unstack() * scale
    t = date_nums(pd.Series(q.index))
    ax.fill_between(t, q[0.05].to_numpy(), q[0.95].to_numpy(), color=_BAND, alpha=0.2,
                    label="p5–p95 of guests")
    ax.plot(t, q[0.5].to_numpy(), color=_BAND, lw=1.2, label="median guest")
    busiest = rates.groupby("guest")["rate"].sum().nlargest(BUSIEST).index
    for name in busiest:
        g = rates[rates["guest"] == name]
        ax.plot(date_nums(g["t"]), g["rate"].to_numpy() * scale, lw=0.7, alpha=0.8,
                label=str(name))
    ax.set_ylabel(unit)
    ax.legend(fontsize=7, loc="upper right", ncols=2)


def guests_figure(samples: pd.DataFrame, zone: dt.tzinfo, faults: pd.DataFrame,
                  lost: pd.DataFrame, spans: pd.DataFrame) -> Figure | None:
    """Per-guest CPU (cores) and traffic (MiB/s, both ways); None without guest samples."""
    cpu = guest_rates(samples, ("cpu_seconds",))
    net = guest_rates(samples, ("net_tx_bytes", "net_rx_bytes"))
    if cpu.empty and net.empty:
        return None
    span = (samples["t"].min(), samples["t"].max())
    fig = new_figure(10.0, 5.0)
    axes = np.atleast_1d(fig.subplots(2, 1, sharex=True))
    for ax, (rates, scale, unit, title) in zip(axes, [
            (cpu, 1.0, "CPU (cores)", "guests' CPU"),
            (net, 1.0 / 2**20, "traffic (MiB/s)", "guests' traffic, sent + received")],
            strict=True):
        if not rates.empty:
            _spread(ax, rates, scale, unit)
        ax.set_title(title, fontsize=9)
        _decorate(ax, zone, span, faults, lost, spans)
    return fig
