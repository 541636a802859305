"""Guest-to-guest network: half the guests receive, the others each stream to one of them,
all at once over the lab bridge."""

from __future__ import annotations

import pytest

from harness.quorum import check_quorum
from harness.workloads import REMOTE_DIR, Agents

PORT = 5201
BYTES = 8 << 20
AGENT = f"{REMOTE_DIR}/transfer.py"


@pytest.mark.roles(receivers="50%", senders="rest")
@pytest.mark.headline("transfer_throughput")
@pytest.mark.quorum(0.95)
def test_guest_to_guest_transfer(agents: Agents, quorum: float) -> None:
    agents.deploy_builtin("transfer")
    check_quorum(agents.serve("transfer-server", ["python3", AGENT, "serve", str(PORT)],
                              role="receivers"), 1.0)
    # Sender i streams to receiver i (modulo): every receiver's link carries a stream in,
    # every sender's one out, all at once over the bridge.
    receivers = [g.spec.address for g in agents.fleet.role("receivers").guests.values()]
    senders = agents.fleet.role("senders").names
    peer = {n: receivers[i % len(receivers)] for i, n in enumerate(senders)}
    group = agents.run_each(
        "transfer", lambda n: ["python3", AGENT, "send", peer[n], str(PORT), str(BYTES)],
        role="senders",
    )
    check_quorum(group, quorum)
