"""Agent metrics as results: each metric of each scenario aggregated over its guests, per N.

How a metric is aggregated comes from its line's ``agg`` field (``sum``, ``mean``, ``max``,
``min``, ``median``, ``p50``, ``p95``…), else from its unit: a rate (``…/s``) or a count
(``req``, ``B``…) is summed over the guests (the total the system delivered), a time
(``s``, ``ms``…) is a latency and gets percentiles, anything else a mean with its spread.

A guest's own value is first reduced from its samples: a rate or anything averaged is the
mean of its samples, a count its last sample (agents print totals), a latency the median.
Percentiles are taken over every sample of every guest (with one sample per guest: over the
guests' values), linear between order statistics (numpy's default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd

from harness.report.scenarios import base_scenario

TIME_UNITS = {"s": 1.0, "sec": 1.0, "seconds": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
              "ns": 1e-9}
COUNT_UNITS = {"req", "reqs", "requests", "op", "ops", "count", "errors", "error", "packets",
               "files", "items", "b", "bytes", "kib", "mib", "gib"}
_PCT = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")
AGGS = ("sum", "mean", "max", "min")
SPREAD_PERCENTILES = (0.50, 0.95, 0.99)

RESULT_COLUMNS = [
    "base", "metric", "unit", "agg", "n_guests", "guests", "samples", "value", "per_guest",
    "lo", "hi", "p50", "p95", "p99", "ideal", "efficiency",
]


def is_rate(unit: str) -> bool:
    return unit.strip().lower().endswith("/s")


def is_time(unit: str) -> bool:
    return unit.strip() in TIME_UNITS


def choose_agg(unit: str, stated: str = "") -> str:
    """The aggregation of a metric: the one its line states (when known), else by unit."""
    s = stated.strip().lower()
    if s == "median":
        return "p50"
    if s in AGGS or _PCT.fullmatch(s):
        return s
    u = unit.strip()
    if is_rate(u) or u.lower() in COUNT_UNITS:
        return "sum"
    if is_time(u):
        return "p50"
    return "mean"


def agg_quantile(agg: str) -> float | None:
    """0.95 for ``p95``; None for an aggregation that is not a percentile."""
    m = _PCT.fullmatch(agg)
    return float(m[1]) / 100 if m else None


def higher_is_better(unit: str, agg: str) -> bool | None:
    """Which way is better: a rate or sum up, a latency down, anything else unknown."""
    if is_time(unit) or agg_quantile(agg) is not None:
        return False
    if is_rate(unit):
        return True
    return None


def agg_label(agg: str, unit: str) -> str:
    """How the aggregate reads in a table head: ``sum over guests``, ``p95 of guests``."""
    if agg == "sum":
        return "sum over guests"
    if agg_quantile(agg) is not None:
        return f"{agg} over guests' samples"
    return f"{agg} of guests"


def _guest_values(m: pd.DataFrame, agg: str, unit: str) -> pd.Series:
    """One value per guest of one (scenario, metric, N): see the module's docstring."""
    by_guest = m.sort_values("t", kind="stable").groupby("guest", sort=True)["value"]
    if agg == "sum" and not is_rate(unit):
        return by_guest.last()
    if agg == "max":
        return by_guest.max()
    if agg == "min":
        return by_guest.min()
    if agg_quantile(agg) is not None:
        return by_guest.median()
    return by_guest.mean()


def _aggregate(agg: str, per_guest: pd.Series, samples: np.ndarray) -> float:
    q = agg_quantile(agg)
    if q is not None:
        return float(np.quantile(samples, q))
    if agg == "sum":
        return float(per_guest.sum())
    if agg == "max":
        return float(per_guest.max())
    if agg == "min":
        return float(per_guest.min())
    return float(per_guest.mean())


def tidy_metric_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Metric rows with ``base`` and a chosen ``agg`` (a metric's first stated unit and agg
    win); worked out once per (scenario, metric), not per row."""
    m = metrics.copy()
    if "agg" not in m.columns:
        m["agg"] = ""
    m["agg"] = m["agg"].fillna("").astype(str)
    names = {s: base_scenario(str(s)) if s else "(run)" for s in m["scenario"].unique()}
    m["base"] = m["scenario"].map(names)
    keys = ["base", "metric"]
    kinds = m[keys].drop_duplicates().set_index(keys)
    kinds["unit"] = m[m["unit"] != ""].groupby(keys)["unit"].first()
    kinds["stated"] = m[m["agg"] != ""].groupby(keys)["agg"].first()
    kinds = kinds.fillna("")
    kinds["agg"] = [choose_agg(str(u), str(a))
                    for u, a in zip(kinds["unit"], kinds["stated"], strict=True)]
    out: pd.DataFrame = m.drop(columns=["unit", "agg"]).join(kinds[["unit", "agg"]], on=keys)
    return out


def guest_values(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (base, metric, N, guest): the guest's value (columns …, guest, value)."""
    if metrics.empty:
        return pd.DataFrame(columns=["base", "metric", "unit", "agg", "n_guests", "guest",
                                     "value"])
    m = tidy_metric_rows(metrics)
    parts = []
    for (base, metric, unit, agg, n), g in m.groupby(
            ["base", "metric", "unit", "agg", "n_guests"], sort=True):
        v = _guest_values(g, str(agg), str(unit))
        parts.append(pd.DataFrame({"base": base, "metric": metric, "unit": unit, "agg": agg,
                                   "n_guests": int(cast(int, n)), "guest": v.index,
                                   "value": v.to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def _row(g: pd.DataFrame, per_guest: pd.Series) -> dict[str, object]:
    agg, unit = str(g["agg"].iloc[0]), str(g["unit"].iloc[0])
    samples = g["value"].to_numpy(dtype=float)
    pct = np.quantile(samples, np.array(SPREAD_PERCENTILES))
    return {"base": g["base"].iloc[0], "metric": g["metric"].iloc[0], "unit": unit, "agg": agg,
            "n_guests": int(g["n_guests"].iloc[0]), "guests": len(per_guest),
            "samples": len(samples), "value": _aggregate(agg, per_guest, samples),
            "per_guest": float(per_guest.median()), "lo": float(per_guest.min()),
            "hi": float(per_guest.max()), "p50": float(pct[0]), "p95": float(pct[1]),
            "p99": float(pct[2])}


def metric_results(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (scenario base, metric, N): the aggregate, the median guest, the spread
    over guests (lo–hi), percentiles of the samples, and for summed rates the ideal (the
    smallest N's value per guest times the guests reporting) and the parallel efficiency."""
    if metrics.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    m = tidy_metric_rows(metrics)
    rows = []
    for _key, g in m.groupby(["base", "metric", "n_guests"], sort=True):
        rows.append(_row(g, _guest_values(g, str(g["agg"].iloc[0]), str(g["unit"].iloc[0]))))
    out = pd.DataFrame(rows)
    first = out.groupby(["base", "metric"])[["value", "guests"]].transform("first")
    summed_rate = (out["agg"] == "sum") & out["unit"].map(is_rate)
    ideal = first["value"] / first["guests"].clip(lower=1) * out["guests"]
    out["ideal"] = ideal.where(summed_rate)
    out["efficiency"] = (out["value"] / out["ideal"]).where(summed_rate)
    return out[RESULT_COLUMNS]


@dataclass(frozen=True)
class ResultSeries:
    """One metric of one scenario across N (its rows of :func:`metric_results`)."""

    base: str
    metric: str
    unit: str
    agg: str
    rows: pd.DataFrame

    @property
    def ns(self) -> list[int]:
        return [int(n) for n in self.rows["n_guests"]]

    @property
    def values(self) -> list[float]:
        return [float(v) for v in self.rows["value"]]


def result_series(results: pd.DataFrame) -> list[ResultSeries]:
    """Every (scenario, metric) of a results table, scenarios and metrics by name."""
    out = []
    for (base, metric), g in results.groupby(["base", "metric"], sort=True):
        g = g.sort_values("n_guests")
        out.append(ResultSeries(str(base), str(metric), str(g["unit"].iloc[0]),
                                str(g["agg"].iloc[0]), g))
    return out
