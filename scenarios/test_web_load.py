"""A real server under real load: nginx on one guest, wrk on the others, from a recipe image.

The image (scenarios/recipes/nginx.toml) carries nginx and wrk, so no guest installs
anything: every guest starts nginx as a recipe service, the one of role ``server`` serves, the
N-1 ``clients`` run wrk against it. Request rate and latency percentiles per client become metrics.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.quorum import check_quorum
from harness.workloads import REMOTE_DIR, Agents

HERE = Path(__file__).parent
SECONDS = 3


@pytest.mark.recipe("recipes/nginx.toml")
@pytest.mark.roles(server=1, clients="rest")
@pytest.mark.headline("wrk_request_rate")
@pytest.mark.quorum(0.95)
def test_nginx_under_wrk(agents: Agents, quorum: float) -> None:
    (server,) = agents.fleet.role("server").guests.values()
    # A row for the server guest: how long nginx took to answer (or why it did not).
    ready = agents.wait_for_url("http://127.0.0.1/16k.txt", role="server", timeout=10,
                                op="nginx_ready")
    check_quorum(ready, 1.0)
    agents.deploy(HERE / "recipes" / "wrk-report.lua", role="clients")
    group = agents.run(
        "wrk",
        ["wrk", "-t1", "-c4", f"-d{SECONDS}s", "-s", f"{REMOTE_DIR}/wrk-report.lua",
         f"http://{server.spec.address}:80/16k.txt"],
        role="clients",
        timeout=SECONDS + 60,
    )
    check_quorum(group, quorum)
