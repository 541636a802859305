"""Client/server load: one guest serves (role ``server``), the other N-1 (``clients``) hammer
it; latency per request."""

from __future__ import annotations

import pytest

from harness.quorum import check_quorum
from harness.workloads import REMOTE_DIR, Agents

PORT = 5300
REQUESTS = 50
AGENT = f"{REMOTE_DIR}/reqload.py"


@pytest.mark.roles(server=1, clients="rest")
@pytest.mark.headline("request_rate")
@pytest.mark.quorum(0.95)
def test_client_server_load(agents: Agents, quorum: float) -> None:
    agents.deploy_builtin("reqload")
    check_quorum(agents.serve("reqload-server", ["python3", AGENT, "serve", str(PORT)],
                              role="server"), 1.0)
    (server,) = agents.fleet.role("server").guests.values()
    group = agents.run("request_load", ["python3", AGENT, "load", server.spec.address,
                                        str(PORT), str(REQUESTS)], role="clients")
    check_quorum(group, quorum)
