"""The report's Results: per scenario, its headline across N, a table of every agent metric
(metric × N: aggregate, median guest, spread) and a plot per metric against N."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.export import PlotFile, save_figure, slug
from harness.report.headline import Headline
from harness.report.plots.results import metric_result_figure
from harness.report.results import ResultSeries, agg_label, agg_quantile, result_series

CAPTION_RESULT = (
    "Left: the metric aggregated over the guests at each N (a summed rate with its ideal: the "
    "smallest N's value per guest times the guests reporting). Right: each guest's own value."
)
CAPTION_SINGLE = (
    "One N only: each guest's value at that N. Run a sweep (e.g. --guests=8,16,32) to see "
    "the metric against N."
)
#: Plots drawn per scenario at most (the table has every metric).
MAX_METRIC_PLOTS = 8


@dataclass
class ResultSection:
    """One scenario's results: its headline(s), metric rows and plots."""

    base: str
    anchor: str
    headlines: list[Headline]
    metrics: list[dict[str, Any]]
    plots: list[PlotFile] = field(default_factory=list)
    plots_skipped: int = 0


def _metric_rows(s: ResultSeries) -> list[dict[str, Any]]:
    """One table row per N of a metric, with how it was aggregated spelled out."""
    rows = []
    for r in s.rows.to_dict(orient="records"):
        pct = agg_quantile(s.agg) is not None
        rows.append({**{str(k): v for k, v in r.items()}, "how": agg_label(s.agg, s.unit),
                     "percentiles": pct})
    return rows


def _ordered(series: list[ResultSeries], headline: str | None) -> list[ResultSeries]:
    """The headline metric first, then rates, then the rest, each by name."""
    def key(s: ResultSeries) -> tuple[int, str]:
        rank = 0 if s.metric == headline else (1 if s.unit.endswith("/s") else 2)
        return rank, s.metric
    return sorted(series, key=key)


def result_sections(results: pd.DataFrame, per_guest: pd.DataFrame, heads: list[Headline],
                    out: Path) -> list[ResultSection]:
    """A section per scenario with agent metrics (or a headline); its plots written."""
    by_base: dict[str, list[ResultSeries]] = {}
    for s in result_series(results):
        by_base.setdefault(s.base, []).append(s)
    head_of: dict[str, list[Headline]] = {}
    for h in heads:
        head_of.setdefault(h.base, []).append(h)
    sections = []
    for base in sorted(set(by_base) | set(head_of)):
        hs = head_of.get(base, [])
        declared = next((h for h in hs if h.declared), None)
        series = _ordered(by_base.get(base, []), declared.metric if declared else None)
        section = ResultSection(base, f"r-{slug(base)}", hs,
                                [row for s in series for row in _metric_rows(s)])
        for s in series[:MAX_METRIC_PLOTS]:
            knee = declared.knee if declared and declared.metric == s.metric else None
            g = per_guest[(per_guest["base"] == base) & (per_guest["metric"] == s.metric)]
            fig = metric_result_figure(s, g, knee, f"{base}: {s.metric}")
            single = len(s.rows) < 2
            section.plots.append(save_figure(
                fig, out, f"result-{slug(base)}-{slug(s.metric)}",
                f"{s.metric} per guest at N={s.ns[0]}" if single else f"{s.metric} against N",
                CAPTION_SINGLE if single else CAPTION_RESULT))
        section.plots_skipped = max(0, len(series) - MAX_METRIC_PLOTS)
        sections.append(section)
    return sections


def headline_rows(heads: list[Headline]) -> tuple[list[int], list[dict[str, Any]]]:
    """The summary's table: every N of the run, and per headline its value at each N."""
    ns = sorted({n for h in heads for n, _ in h.points})
    rows = []
    for h in heads:
        at = dict(h.points)
        rows.append({"headline": h, "cells": [h.value_text(at[n]) if n in at else "–"
                                              for n in ns]})
    return ns, rows
