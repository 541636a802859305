"""Boot storm: how long N guests take from nothing to authenticated SSH, phase by phase."""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.lab import Lab
from harness.store import Recorder


def test_boot_storm(n_guests: int, lab_factory: Callable[[int], Lab], recorder: Recorder) -> None:
    t0 = time.time_ns()
    lab = lab_factory(n_guests)  # records created/started/tcp/banner/auth/first_command rows
    t1 = time.time_ns()
    recorder.timing("bringup_total", t0, t1, phase="bringup")
    assert lab.fleet is not None
    assert len(lab.fleet.names) == n_guests
