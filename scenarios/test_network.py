"""Guest-to-guest network: every guest sends to the next one over the lab bridge at once."""

from __future__ import annotations

import pytest

from harness.quorum import check_quorum
from harness.workloads import REMOTE_DIR, Agents

PORT = 5201
BYTES = 8 << 20
AGENT = f"{REMOTE_DIR}/transfer.py"


@pytest.mark.quorum(0.95)
def test_guest_to_guest_transfer(agents: Agents, quorum: float) -> None:
    names = agents.fleet.names
    if len(names) < 2:
        pytest.skip("a transfer between guests needs at least 2 guests")
    agents.deploy_builtin("transfer")
    check_quorum(agents.serve("transfer-server", ["python3", AGENT, "serve", str(PORT)]), 1.0)
    # Guest i sends to guest i+1: every link of the bridge carries one stream.
    peer = {n: agents.fleet.guests[names[(i + 1) % len(names)]].spec.address
            for i, n in enumerate(names)}
    group = agents.run_each(
        "transfer", lambda n: ["python3", AGENT, "send", peer[n], str(PORT), str(BYTES)]
    )
    check_quorum(group, quorum)
