"""Reports of a run: plots drawn in the reader's time zone, one self-contained HTML page, compare.

The CLI and the pytest plugin use :func:`render_report`, :func:`resolve_zone` and
:func:`compare_runs`; the modules below hold the parts:

- ``zones``: which zone to draw in and how to name it on an axis
- ``rundata``: loading a run directory (and rebuilding Parquet of an interrupted run)
- ``scenarios``: grouping a sweep's ``test[n=..]`` nodes back into one scenario
- ``summary``: percentiles, throughput, efficiency, the scaling knee, failures
- ``plots`` / ``timeaxis`` / ``export``: the figures, their time axes, PNG + SVG files
- ``templating`` / ``render``: the HTML page
- ``compare``: what changed between two runs
"""

from __future__ import annotations

from harness.report.compare import CompareResult, CompareRow, Regression, compare_runs
from harness.report.render import render_report
from harness.report.scenarios import base_scenario
from harness.report.zones import resolve_zone

__all__ = [
    "CompareResult",
    "CompareRow",
    "Regression",
    "base_scenario",
    "compare_runs",
    "render_report",
    "resolve_zone",
]
