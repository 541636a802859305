"""One regression found by ``scalelab compare``: a number of one (scenario, N) that got worse."""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.report.templating import fmt_metric

#: The harness operations' numbers: metric → unit (their own formatting).
HARNESS_UNITS = {"p50": "s", "p95": "s", "throughput": "ops/s", "success_rate": "share"}


def fmt_value(metric: str, value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "–"
    unit = unit or HARNESS_UNITS.get(metric, "")
    if unit == "ops/s":
        return f"{value:,.1f}/s"
    if unit == "share":
        return f"{value * 100:.1f} %"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3f} s"
    return fmt_metric(value, unit)


@dataclass(frozen=True)
class Regression:
    """One metric of one (scenario, N) that got worse by more than the threshold."""

    scenario: str
    n_guests: int
    metric: str
    before: float
    after: float
    change: float  # relative: (after - before) / before
    unit: str = ""  # of an agent metric; the harness's own metrics know theirs
    headline: bool = False
    #: How likely the change is by chance, where it was tested (a success-rate drop).
    p_value: float | None = None

    def __str__(self) -> str:
        what = f"{self.metric} (headline)" if self.headline else self.metric
        p = "" if self.p_value is None else f", p = {self.p_value:.2g}"
        return (
            f"{self.scenario} N={self.n_guests}: {what} "
            f"{fmt_value(self.metric, self.before, self.unit)} → "
            f"{fmt_value(self.metric, self.after, self.unit)} ({self.change * 100:+.1f} %{p})"
        )
