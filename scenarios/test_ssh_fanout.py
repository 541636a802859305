"""SSH fan-out: the latency of one command on every guest at once, as N grows."""

from __future__ import annotations

import pytest

from harness.quorum import check_quorum
from harness.ssh import FanOut
from harness.store import Recorder
from harness.workloads import record_results, roundtrip


@pytest.mark.quorum(0.95)
def test_ssh_roundtrip(fleet: FanOut, recorder: Recorder, rounds: int, quorum: float) -> None:
    groups = roundtrip(fleet, recorder, rounds=rounds, command="true")
    check_quorum(groups, quorum)


def test_ssh_hostname(fleet: FanOut, recorder: Recorder) -> None:
    """Every guest answers with its own name: identity holds under fan-out."""
    group = record_results(fleet.run("hostname"), recorder, "hostname")
    assert group.ok, group.failed
    assert {name: r.stdout.strip() for name, r in group.results.items()} == {
        name: name for name in group.results
    }
