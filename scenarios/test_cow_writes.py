"""Copy-on-write writes: fsync'ed writes into each guest's private layer, and its size."""

from __future__ import annotations

import pytest

from harness.backends.base import HasFootprint
from harness.lab import Lab
from harness.quorum import check_quorum
from harness.store import Recorder
from harness.workloads import Agents


@pytest.mark.headline("write_throughput")
@pytest.mark.quorum(0.95)
def test_cow_writes(agents: Agents, lab: Lab, recorder: Recorder, quorum: float) -> None:
    agents.deploy_builtin("cowwrite")
    group = agents.python("cowwrite", 16, 65536)
    check_quorum(group, quorum)
    # How much each guest's own layer holds now: what N guests cost on the host.
    if isinstance(lab.backend, HasFootprint):
        names = set(agents.fleet.names)
        chosen = [g for g in lab.guests if g.name in names]
        for name, values in lab.backend.footprint(chosen).items():
            if "upper_bytes" in values:
                recorder.metric("upper_bytes_after_writes", values["upper_bytes"][0],
                                unit="B", guest=name)
