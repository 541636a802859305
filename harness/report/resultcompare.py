"""What changed in the agents' results between two runs: each metric of each scenario at
each N (as the report aggregates it), a drop in a rate or a rise in a latency beyond the
threshold flagged — the headline's first."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from harness.report.headline import declared_headlines
from harness.report.plots.figure import n_axis, new_figure
from harness.report.plots.results import value_scale
from harness.report.regression import Regression, fmt_value
from harness.report.results import agg_label, higher_is_better, metric_results
from harness.report.rundata import RunData


@dataclass(frozen=True)
class ResultChange:
    """One agent metric of one (scenario, N) in either run (None where a run lacks it)."""

    scenario: str
    metric: str
    unit: str
    how: str
    n_guests: int
    a: float | None
    b: float | None
    change: float | None
    headline: bool
    better: str  # "higher", "lower", or "" when the metric has no known direction
    flagged: bool

    def cells(self) -> tuple[str, str]:
        return fmt_value(self.metric, self.a, self.unit), fmt_value(self.metric, self.b, self.unit)


def _num(value: object) -> float | None:
    if not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def worse(change: float | None, higher_better: bool | None, threshold: float) -> bool:
    if change is None or higher_better is None:
        return False
    return change < -threshold if higher_better else change > threshold


def compare_results(a: RunData, b: RunData, threshold: float
                    ) -> tuple[list[ResultChange], list[Regression]]:
    """Join both runs' metric results on (scenario, metric, N); flag what got worse."""
    ra, rb = metric_results(a.metrics), metric_results(b.metrics)
    heads = {**declared_headlines(a.info), **declared_headlines(b.info)}
    keys = ["base", "metric", "n_guests"]
    cols = [*keys, "unit", "agg", "value"]
    merged = ra[cols].merge(rb[cols], on=keys, how="outer", suffixes=("_a", "_b"))
    changes: list[ResultChange] = []
    regressions: list[Regression] = []
    for r in merged.to_dict(orient="records"):
        unit = str(r["unit_b"] if isinstance(r["unit_b"], str) else r["unit_a"])
        agg = str(r["agg_b"] if isinstance(r["agg_b"], str) else r["agg_a"])
        va, vb = _num(r["value_a"]), _num(r["value_b"])
        change = (vb - va) / va if va is not None and vb is not None and va != 0 else None
        direction = higher_is_better(unit, agg)
        base, metric, n = str(r["base"]), str(r["metric"]), int(r["n_guests"])
        is_head = heads.get(base) == metric
        bad = worse(change, direction, threshold)
        changes.append(ResultChange(
            base, metric, unit, agg_label(agg, unit), n, va, vb, change, is_head,
            {True: "higher", False: "lower", None: ""}[direction], bad))
        if bad and va is not None and vb is not None and change is not None:
            regressions.append(Regression(base, n, metric, va, vb, change, unit, is_head))
    changes.sort(key=lambda c: (c.scenario, not c.headline, c.metric, c.n_guests))
    regressions.sort(key=lambda g: (not g.headline, g.scenario, g.metric, g.n_guests))
    return changes, regressions


def results_text(changes: list[ResultChange]) -> list[str]:
    """The agent-metric lines of compare.txt."""
    if not changes:
        return []
    head = f"{'scenario':<26} {'metric':<24} {'N':>5}  {'A → B':<34} {'change':>8}  flag"
    lines = ["", "agent metrics (headline first; aggregated over guests as in the report):",
             head, "-" * len(head)]
    for c in changes:
        before, after = c.cells()
        delta = f"{c.change * 100:+.0f}%" if c.change is not None else "–"
        name = f"{c.metric}{' *' if c.headline else ''}"
        flag = "WORSE" if c.flagged else ""
        lines.append(f"{c.scenario[:26]:<26} {name[:24]:<24} {c.n_guests:>5}  "
                     f"{before + ' → ' + after:<34} {delta:>8}  {flag}".rstrip())
    lines.append("(* the scenario's headline)")
    return lines



def headline_figure(changes: list[ResultChange], scenario: str) -> Figure | None:
    """The scenario's headline against N in both runs (None without a headline or when it is
    at fewer than two N in both runs: the table says it all then)."""
    rows = [c for c in changes if c.scenario == scenario and c.headline]
    ns = sorted({c.n_guests for c in rows})
    if len(ns) < 2:
        return None
    metric, unit = rows[0].metric, rows[0].unit
    fig = new_figure(7.0, 3.4)
    ax = fig.add_subplot()
    values = np.array([[c.a, c.b] for c in rows], dtype=float)
    scale, shown = value_scale(unit, values)
    for col, (label, style) in enumerate((("A", "o--"), ("B", "s-"))):
        pts = sorted((c.n_guests, values[i, col]) for i, c in enumerate(rows))
        ax.plot([n for n, _ in pts], [v * scale for _, v in pts], style, label=label)
    n_axis(ax, ns)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"{metric} ({shown})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{scenario}: headline {metric}, A (dashed) vs B (solid)")
    return fig
