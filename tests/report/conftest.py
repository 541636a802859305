"""Fixtures of the report tests: synthetic runs recorded through the real Store API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from report.synthruns import RUN_ID, make_run

from harness.report import render_report


@pytest.fixture
def synth_run() -> Callable[..., Path]:
    """``synth_run(run_dir, RunSpec(...))`` records a synthetic run and returns its directory."""
    return make_run


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic run rendered once for the structure and browser tests: its index.html."""
    run_dir = make_run(tmp_path_factory.mktemp("reports") / RUN_ID)
    return render_report(run_dir)
