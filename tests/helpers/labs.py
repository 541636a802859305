"""Helpers for the backend tests: a run session over real labs, and commands that must pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from leaks import PROJECT

from harness.config import build_config
from harness.lab import Lab
from harness.session import Session


@contextlib.contextmanager
def lab_session(reports: Path, **options: str) -> Iterator[Session]:
    """A session (one run) writing under ``reports``; its labs are taken down at the end."""
    s = Session(build_config({"reports_dir": str(reports), **options}, PROJECT))
    try:
        yield s
    finally:
        s.finish(render=False)


def run_ok(lab: Lab, name: str, cmd: str) -> str:
    """``cmd``'s stdout on guest ``name``; the test fails if it exits non-zero."""
    res = lab.require_fleet().run(cmd, names=[name])[name]
    assert res.exit_status == 0, res.stderr
    return str(res.stdout)
