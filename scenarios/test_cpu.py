"""CPU contention: the same fixed work on every guest at once; time per guest grows with N."""

from __future__ import annotations

import pytest

from harness.quorum import check_quorum
from harness.workloads import Agents


@pytest.mark.headline("hash_rate")
@pytest.mark.quorum(0.95)
def test_cpu_contention(agents: Agents, quorum: float) -> None:
    agents.deploy_builtin("cpu")
    group = agents.python("cpu", 20000)
    check_quorum(group, quorum)
