"""Client/server load: one guest serves, the other N-1 hammer it; latency per request."""

from __future__ import annotations

import pytest

from harness.quorum import check_quorum
from harness.workloads import REMOTE_DIR, Agents

PORT = 5300
REQUESTS = 50
AGENT = f"{REMOTE_DIR}/reqload.py"


@pytest.mark.quorum(0.95)
def test_client_server_load(agents: Agents, quorum: float) -> None:
    names = agents.fleet.names
    server, clients = names[0], names[1:] or names[:1]  # alone, the guest loads itself
    agents.deploy_builtin("reqload")
    check_quorum(agents.serve("reqload-server", ["python3", AGENT, "serve", str(PORT)],
                              names=[server]), 1.0)
    address = agents.fleet.guests[server].spec.address
    group = agents.run("request_load", ["python3", AGENT, "load", address, str(PORT),
                                        str(REQUESTS)], names=clients)
    check_quorum(group, quorum)
