"""Reports of a run: plots drawn in the reader's time zone, one self-contained HTML page, compare.

The CLI and the pytest plugin use :func:`render_report`, :func:`resolve_zone` and
:func:`compare_runs`; the modules below hold the parts:

- ``zones``: which zone to draw in and how to name it on an axis
- ``rundata``: loading a run directory (and rebuilding Parquet of an interrupted run)
- ``scenarios``: grouping a sweep's ``test[n=..]`` nodes back into one scenario
- ``summary``: percentiles, throughput, efficiency, the scaling knee, failures
- ``results``: agent metrics aggregated over guests per scenario and N (sum, percentiles, mean)
- ``headline`` / ``knee``: each scenario's headline across N, its knee and what ran out there
- ``resultsection``: the page's Results (a table and a plot per metric)
- ``plots`` / ``timeaxis`` / ``export``: the figures, their time axes, PNG + SVG files
- ``templating`` / ``render``: the HTML page
- ``compare`` / ``resultcompare`` / ``regression``: what changed between two runs, the
  harness operations' and the agents' results, and what got worse
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.report.compare import CompareResult, CompareRow, Regression, compare_runs
    from harness.report.render import render_report
    from harness.report.scenarios import base_scenario
    from harness.report.zones import resolve_zone

# Imported when first used (PEP 562): the configuration checks a zone through
# ``harness.report.zones`` without loading matplotlib and the rest of the report.
_LAZY = {
    "CompareResult": "compare", "CompareRow": "compare", "Regression": "compare",
    "compare_runs": "compare", "render_report": "render", "base_scenario": "scenarios",
    "resolve_zone": "zones",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"harness.report.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CompareResult",
    "CompareRow",
    "Regression",
    "base_scenario",
    "compare_runs",
    "render_report",
    "resolve_zone",
]
