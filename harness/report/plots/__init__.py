"""The report's figures, drawn with matplotlib's object API (``Figure``, never pyplot).

Every figure function takes already-filtered rows and returns a :class:`Figure` with an Agg
canvas. Data is aggregated with pandas/numpy first and drawn as a few collections, never one
artist per row, so a million timing rows stay quick; scatter plots and Gantt rows are sampled
when huge and the figure says so.

- ``figure``: a new figure, colours per N, latency units, the N axis, fault/loss decorations
- ``gantt``: the bring-up timeline, one bar row per guest
- ``scaling``: latency/throughput/efficiency against N, and the latency distribution per N
- ``timeline``: every operation's latency at the time it began
- ``segments``: operations that start together, a segment per guest from start to end
- ``results``: agent metrics against N (aggregate, ideal, efficiency, spread over guests)
- ``metrics``: agents' metrics over time
- ``resources``: what the host and the guests spent over the run

The figure functions are re-exported here, so ``plots.<name>`` reads as one module to callers.
"""

from __future__ import annotations

from harness.report.plots.figure import FAIL_COLOUR, latency_unit, n_axis, new_figure
from harness.report.plots.gantt import BRINGUP_STEPS, MAX_GANTT_ROWS, bringup_gantt
from harness.report.plots.metrics import (
    MAX_GUEST_LINES,
    MAX_METRICS,
    METRIC_BINS,
    MIN_SERIES_SAMPLES,
    metrics_figure,
    time_series_metrics,
)
from harness.report.plots.resources import guests_figure, host_figure
from harness.report.plots.results import metric_result_figure
from harness.report.plots.scaling import CDF_POINTS, distribution_figure, scaling_figure
from harness.report.plots.segments import operations_figure, starts_together
from harness.report.plots.timeline import MAX_SCATTER, MIN_FAILURE_POINTS, latency_over_time

__all__ = [
    "BRINGUP_STEPS",
    "CDF_POINTS",
    "FAIL_COLOUR",
    "MAX_GANTT_ROWS",
    "MAX_GUEST_LINES",
    "MAX_METRICS",
    "MAX_SCATTER",
    "METRIC_BINS",
    "MIN_FAILURE_POINTS",
    "MIN_SERIES_SAMPLES",
    "bringup_gantt",
    "distribution_figure",
    "guests_figure",
    "host_figure",
    "latency_over_time",
    "latency_unit",
    "metric_result_figure",
    "metrics_figure",
    "n_axis",
    "new_figure",
    "operations_figure",
    "scaling_figure",
    "starts_together",
    "time_series_metrics",
]
