"""Faults really injected and observed; crash safety under SIGKILL, repeated."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from leaks import PROJECT, snapshot

from harness.config import build_config
from harness.faults import Nemesis
from harness.image.cache import Image
from harness.lab import Lab
from harness.quorum import QuorumNotMet, check_quorum
from harness.session import Session
from harness.workloads import REMOTE_DIR, Agents

pytestmark = pytest.mark.integration


@pytest.fixture
def lab4(image: Image, tmp_path: Path) -> Iterator[tuple[Session, Lab]]:
    before = snapshot()
    cfg = build_config({"guests": "4", "reports_dir": str(tmp_path)}, PROJECT)
    s = Session(cfg, image=image)
    lab = s.lab_up(4)
    try:
        yield s, lab
    finally:
        s.finish(render=False)
        assert before.diff(snapshot()) == {}


def test_pause_shows_as_a_band_and_resumes(lab4: tuple[Session, Lab]) -> None:
    s, lab = lab4
    rec = s.recorder("pause", 4)
    nem = Nemesis(lab.backend, rec, lab.require_fleet())
    fleet = lab.require_fleet()
    target = fleet.names[1]
    with nem.paused([target]):
        t0 = time.monotonic()
        thread_result: dict[str, float] = {}

        def slow() -> None:
            fleet.run("true", names=[target], timeout=30)
            thread_result["done"] = time.monotonic() - t0

        import threading

        th = threading.Thread(target=slow)
        th.start()
        time.sleep(1.0)
        assert "done" not in thread_result  # frozen: the command cannot finish
    th.join(10)
    assert thread_result["done"] >= 0.9  # ...and it finished once the guest was thawed
    df = rec.timings()
    band = df[(df["phase"] == "fault") & (df["op"] == "pause")]
    assert list(band["guest"]) == [target]
    assert band["duration_s"].iloc[0] >= 1.0
    assert fleet.run("true").ok


def test_partition_between_groups_and_heal(lab4: tuple[Session, Lab]) -> None:
    s, lab = lab4
    fleet = lab.require_fleet()
    rec = s.recorder("partition", 4)
    agents = Agents(fleet, rec)
    agents.deploy_builtin("transfer")
    check_quorum(agents.serve("transfer-server", ["python3", f"{REMOTE_DIR}/transfer.py",
                                                  "serve", "5201"]), 1.0)
    a, b = fleet.names[:2], fleet.names[2:]
    ip = {n: fleet.guests[n].spec.address for n in fleet.names}

    def send(src: str, dst: str, timeout: float = 4) -> int:
        res = fleet.run(
            f"timeout {timeout} python3 {REMOTE_DIR}/transfer.py send {ip[dst]} 5201 100000",
            names=[src], timeout=30)
        return int(res[src].exit_status)

    nem = Nemesis(lab.backend, rec, fleet)
    with nem.partitioned(a, b):
        assert send(a[0], a[1]) == 0  # inside a side: fine
        assert send(b[0], b[1]) == 0
        assert send(a[0], b[0]) != 0  # across: dropped
        assert send(b[1], a[1]) != 0
        assert fleet.run("true").ok  # the host still reaches everyone
    assert send(a[0], b[0]) == 0  # healed
    rows = rec.timings()
    assert set(rows[rows["phase"] == "fault"]["guest"]) == set(fleet.names)


def test_isolate_and_bandwidth(lab4: tuple[Session, Lab]) -> None:
    s, lab = lab4
    fleet = lab.require_fleet()
    rec = s.recorder("isolate", 4)
    nem = Nemesis(lab.backend, rec, fleet)
    target = fleet.names[0]
    with nem.isolated([target]):
        res = fleet.run("true", names=[target], timeout=2)
        assert not res.ok
    assert fleet.run("true", names=[target], timeout=10).ok
    # 1 mbit/s: 250 KB take about 2 s instead of a few milliseconds.
    with nem.bandwidth([target], "1mbit"):
        t0 = time.monotonic()
        res = fleet.run("head -c 250000 /dev/zero", names=[target], timeout=60)
        slow = time.monotonic() - t0
    assert res.ok and len(res[target].stdout) == 250000
    assert slow > 1.2, slow
    t0 = time.monotonic()
    fleet.run("head -c 250000 /dev/zero", names=[target], timeout=60)
    assert time.monotonic() - t0 < slow / 2


KILL_SCENARIO = """
import pytest
from harness.faults import Nemesis
from harness.quorum import check_quorum
from harness.workloads import roundtrip

@pytest.mark.quorum(0.8)
def test_kill_two(fleet, recorder, nemesis, quorum):
    groups = roundtrip(fleet, recorder, rounds=3)
    nemesis.kill(fleet.names[3:5])
    groups += roundtrip(fleet, recorder, rounds=3)
    check_quorum(groups, quorum)

def test_after_loss(fleet, n_guests):
    assert len(fleet.names) == 14  # the sweep goes on with the rest
"""


def test_two_of_sixteen_killed_quorum_passes(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    scen = tmp_path / "scen"
    scen.mkdir()
    (scen / "test_kill.py").write_text(KILL_SCENARIO)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(scen), "--guests=16", f"--rootdir={PROJECT}",
         f"--reports-dir={tmp_path / 'r'}", "-p", "no:cacheprovider", "-q"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert before.diff(snapshot()) == {}
    run = (tmp_path / "r" / "latest").resolve()
    t = pd.read_parquet(run / "timings.parquet")
    lost = t[t["phase"] == "lost"]
    assert sorted(lost["guest"]) == ["g003", "g004"]
    kills = t[(t["phase"] == "fault") & (t["op"] == "kill")]
    rt = t[t["op"] == "roundtrip"]
    for g in ("g003", "g004"):
        killed_at = kills[kills["guest"] == g]["start"].iloc[0]
        mine = rt[rt["guest"] == g]
        # No row measured before the kill is missing; afterwards the guest is lost.
        assert (mine[mine["end"] <= killed_at]["ok"]).sum() == 3
        assert (mine[mine["start"] > killed_at]["error_class"] == "lost").all()
    assert rt[~rt["guest"].isin(["g003", "g004"])]["ok"].all()
    html = (run / "index.html").read_text()
    assert "g003" in html and "g004" in html


def test_quorum_fails_when_too_many_fail() -> None:
    from harness.ssh import GroupResult, GuestError

    g = GroupResult(results={"a": 1, "b": 2},
                    errors={"c": GuestError("c", "lost", "x"),
                            "d": GuestError("d", "timeout", "y")})
    with pytest.raises(QuorumNotMet, match=r"2/4 guests succeeded \(50%\).*lost: 1"):
        check_quorum(g, 0.8)
    assert check_quorum(g, 0.5) == 0.5


UP_SCRIPT = """
import sys
from pathlib import Path
from harness.config import build_config
from harness.session import Session
cfg = build_config({"guests": sys.argv[1], "reports_dir": sys.argv[2]}, Path(sys.argv[3]))
s = Session(cfg)
print("START", flush=True)
s.lab_up(int(sys.argv[1]))
print("UP", flush=True)
sys.stdin.read()
"""


def test_sigkill_during_bringup_then_clean_10_times(image: Image, tmp_path: Path) -> None:
    """Kill the owner at a random moment of a 32-guest bring-up; `scalelab clean` must
    remove exactly what it made, every time."""
    before = snapshot()
    rng = random.Random(1234)
    for cycle in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", UP_SCRIPT, "32", str(tmp_path), str(PROJECT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "START"
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        out = subprocess.run([sys.executable, "-m", "harness.cli", "clean"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (cycle, out.stdout, out.stderr)
        left = before.diff(snapshot())
        assert left == {}, (cycle, left)
