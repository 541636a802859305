"""Servers a scenario starts belong to it: `Agents.serve` and `stop_servers` on real guests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.labs import lab_session, run_ok

from harness.image.cache import Image
from harness.lab import Lab
from harness.quorum import QuorumNotMet, check_quorum
from harness.session import Session
from harness.workloads import REMOTE_DIR, Agents

pytestmark = pytest.mark.integration

PORT = 5300
SERVE = ["python3", f"{REMOTE_DIR}/reqload.py", "serve", str(PORT)]


@pytest.fixture(scope="module")
def lab2(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, Lab]]:
    with lab_session(tmp_path_factory.mktemp("agents")) as s:
        yield s, s.lab_up(2)


def listening(lab: Lab, name: str) -> bool:
    out = run_ok(lab, name, f"ss -Hltn 'sport = :{PORT}' | wc -l")
    return int(out.strip()) > 0


def running(lab: Lab, name: str, pattern: str) -> int:
    """How many processes of guest ``name`` have ``pattern`` in their command line."""
    # The image has no procps; [x]yz keeps grep from counting itself.
    pat = f"[{pattern[0]}]{pattern[1:]}"
    out = run_ok(lab, name, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; "
                 f"echo; done | grep -c -e '{pat}' || true")
    return int(out.strip())


def test_serve_then_stop_frees_the_port_and_keeps_the_log(lab2: tuple[Session, Lab],
                                                          tmp_path: Path) -> None:
    s, lab = lab2
    log_dir = tmp_path / "guests"
    target = lab.guests[0].name
    with Agents(lab.require_fleet(), s.recorder("serve-stop", 2), log_dir=log_dir) as agents:
        agents.deploy_builtin("reqload")
        check_quorum(agents.serve("srv", SERVE, names=[target]), 1.0)
        assert listening(lab, target)
        # The server leads a session of its own, so stopping it reaches all it started.
        pid = run_ok(lab, target, "cat /run/scalelab-srv.pid").strip()
        assert run_ok(lab, target, f"cut -d' ' -f6 /proc/{pid}/stat").strip() == pid
    # Leaving the block stopped it: the port is free and the pid file gone.
    assert not listening(lab, target)
    assert run_ok(lab, target, f"kill -0 {pid} 2>/dev/null && echo alive || echo gone"
                  ).strip() == "gone"
    assert "listening" in (log_dir / f"{target}.srv.log").read_text()
    rows = s.recorder().timings()
    rows = rows[rows["scenario"] == "serve-stop"]
    assert list(rows[rows["op"] == "srv_start"]["guest"]) == [target]
    stop = rows[rows["op"] == "srv_stop"]
    assert list(stop["guest"]) == [target] and stop["ok"].all()


def test_a_server_that_cannot_start_says_why(lab2: tuple[Session, Lab], tmp_path: Path) -> None:
    s, lab = lab2
    target = lab.guests[1].name
    rec = s.recorder("port-taken", 2)
    with Agents(lab.require_fleet(), rec, log_dir=tmp_path) as agents:
        agents.deploy_builtin("reqload")
        check_quorum(agents.serve("first", SERVE, names=[target]), 1.0)
        second = agents.serve("second", SERVE, names=[target])
        assert not second.ok
        with pytest.raises(QuorumNotMet, match="Address already in use"):
            check_quorum(second, 1.0)
        silent = agents.serve("silent", ["sleep", "30"], names=[target], timeout=0.5)
        assert "did not print listening within 0.5 s" in silent.reason(target)
    rows = rec.timings()
    rows = rows[rows["scenario"] == "port-taken"]
    failed = rows[rows["op"] == "second_start"].iloc[0]
    assert not failed["ok"] and "Address already in use" in str(failed["error"])
    # Every server was stopped, the one that failed to start included (nothing is left).
    assert set(rows[rows["phase"] == "teardown"]["op"]) == {
        "first_stop", "second_stop", "silent_stop"}
    assert running(lab, target, "reqload.py serve") == 0
    assert running(lab, target, "sleep 30") == 0
    assert not listening(lab, target)


def test_stop_reaches_a_server_that_ignores_sigterm(lab2: tuple[Session, Lab]) -> None:
    s, lab = lab2
    target = lab.guests[0].name
    stubborn = ["sh", "-c", "trap '' TERM; echo listening; while :; do sleep 0.2; done"]
    agents = Agents(lab.require_fleet(), s.recorder("stubborn", 2))
    check_quorum(agents.serve("stubborn", stubborn, names=[target]), 1.0)
    assert running(lab, target, "do sleep 0.2") == 1
    group = agents.stop_servers(grace=0.5)
    assert group.ok, group.reason(target)
    assert running(lab, target, "do sleep 0.2") == 0
    assert running(lab, target, "sleep 0.2") == 0  # its children went with it
    assert agents.servers == []
