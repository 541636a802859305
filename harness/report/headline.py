"""A scenario's headline: the one number that is its result, at each N, with its knee.

A scenario names it with ``@pytest.mark.headline("requests_per_s")`` (the plugin writes it
into run.json's ``tests`` entries); the headline is then that agent metric aggregated over
the guests (harness.report.results). Without one, each harness operation's throughput stays
the headline, as before there were headlines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.report.knee import find_rise, knee_reason
from harness.report.results import agg_label, higher_is_better
from harness.report.scenarios import base_scenario
from harness.report.summary import KNEE_GROWTH, find_knee
from harness.report.templating import fmt_metric

SWEEP_HINT = "sweep N (e.g. --guests=8,16,32) for a scaling curve"


@dataclass(frozen=True)
class Headline:
    """One scenario's result across N; ``knee`` is None unless it stops scaling."""

    base: str
    title: str
    metric: str
    unit: str
    agg: str
    how: str  # "sum over guests", "harness operation"…
    points: tuple[tuple[int, float], ...]
    declared: bool
    knee: int | None
    text: str  # the knee sentence (or what a single N means)
    reason: str = ""  # what ran out at the knee
    note: str = ""  # e.g. a declared metric that no agent reported

    @property
    def single_n(self) -> bool:
        return len(self.points) < 2

    def value_text(self, value: float) -> str:
        return fmt_metric(value, self.unit)


def declared_headlines(info: dict[str, Any]) -> dict[str, str]:
    """Scenario base → the headline metric its tests declared (run.json ``tests``)."""
    tests = info.get("tests")
    out: dict[str, str] = {}
    for t in tests if isinstance(tests, list) else []:
        if isinstance(t, dict) and isinstance(t.get("headline"), str) and t.get("test"):
            out.setdefault(base_scenario(str(t["test"])), str(t["headline"]))
    return out


def _knee_text(h: Headline, higher_better: bool | None, growth: float) -> tuple[int | None, str]:
    ns = [n for n, _ in h.points]
    values = [v for _, v in h.points]
    if h.single_n:
        value = h.value_text(values[0]) if values else "–"
        return None, f"N={ns[0]} only: {h.metric} {value} ({h.how}); {SWEEP_HINT}"
    pct = f"{growth:.0%}"
    if higher_better is False:
        n = find_rise(ns, values, growth)
        if n is None:
            return None, f"{h.metric} grows ≤ {pct} per doubling up to N={ns[-1]}"
        return n, f"{h.metric} grows > {pct} per doubling beyond N={n}"
    n = find_knee(ns, values, growth)
    if n is None:
        return None, f"{h.metric} still scaling at N={ns[-1]} (> {pct} per doubling)"
    return n, f"{h.metric} grows ≤ {pct} per doubling beyond N={n}"


def _from_results(base: str, metric: str, results: pd.DataFrame) -> Headline | None:
    rows = results[(results["base"] == base) & (results["metric"] == metric)]
    if rows.empty:
        return None
    rows = rows.sort_values("n_guests")
    unit, agg = str(rows["unit"].iloc[0]), str(rows["agg"].iloc[0])
    points = tuple((int(n), float(v)) for n, v in zip(rows["n_guests"], rows["value"],
                                                        strict=True))
    return Headline(base, base, metric, unit, agg, agg_label(agg, unit), points, True, None, "")


def _from_stats(stats: pd.DataFrame, base: str, note: str) -> list[Headline]:
    out = []
    for title, g in stats[stats["base"] == base].groupby("title", sort=True, observed=True):
        g = g.sort_values("n_guests")
        points = tuple((int(n), float(v)) for n, v in zip(g["n_guests"], g["throughput"],
                                                            strict=True))
        out.append(Headline(base, str(title), f"{g['op'].iloc[0]} throughput", "ops/s", "sum",
                            "harness operation", points, False, None, "", note=note))
    return out


def headlines(info: dict[str, Any], results: pd.DataFrame, stats: pd.DataFrame,
              timings: pd.DataFrame, samples: pd.DataFrame,
              growth: float = KNEE_GROWTH) -> list[Headline]:
    """Every scenario's headline with its knee and, at the knee, what ran out."""
    declared = declared_headlines(info)
    bases = sorted(set(stats["base"].astype(str)) | set(declared))
    config = info.get("config")
    cpus = config.get("guest_cpus") if isinstance(config, dict) else None
    guest_cpus = float(cpus) if isinstance(cpus, int | float) else None
    out: list[Headline] = []
    for base in bases:
        found = _from_results(base, declared[base], results) if base in declared else None
        note = (f"headline {declared[base]!r} was not reported by any agent: the harness "
                "operation stands in") if base in declared and found is None else ""
        for h in [found] if found else _from_stats(stats, base, note):
            n, text = _knee_text(h, higher_is_better(h.unit, h.agg), growth)
            reason = (knee_reason(samples, timings, base, n, guest_cpus, growth)
                      if n is not None else "")
            out.append(dataclasses.replace(h, knee=n, text=text, reason=reason))
    return out
