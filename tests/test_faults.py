"""Faults really injected and observed; crash safety under SIGKILL, repeated."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.scenarios import run_scenario
from leaks import PROJECT, snapshot

from harness.config import build_config
from harness.faults import Nemesis
from harness.image.cache import Image
from harness.lab import Lab
from harness.quorum import QuorumNotMet, check_quorum
from harness.session import Session
from harness.state import RunState, list_states
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


def _freezer_state(lab: Lab, guest: str) -> str:
    (path,) = Path("/sys/fs/cgroup/freezer/scalelab").glob(f"*/{guest}/freezer.state")
    assert lab.state is not None and lab.state.run_id in str(path), path
    return path.read_text().strip()


def _host_veth(lab: Lab, guest: str) -> str:
    """The host end of a guest's veth, as the run's journal names it (with its netns)."""
    assert lab.state is not None
    (veth,) = [str(r.get("name")) for r in lab.state.resources
               if r.kind == "link" and str(r.get("netns", "")).endswith(f"-{guest}")]
    assert Path(f"/sys/class/net/{veth}").exists(), veth
    return veth


def _has_tbf(dev: str) -> bool:
    out = subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True,
                         check=True).stdout
    return " tbf " in f" {out}"


def test_schedule_runs_each_fault_at_its_offset(lab4: tuple[Session, Lab]) -> None:
    """A plan of four faults: each row starts at its offset and lasts its duration, and each
    fault is seen on the host (frozen cgroup, veth down, tbf, dead guest) inside its row's
    window and nowhere else."""
    s, lab = lab4
    fleet = lab.require_fleet()
    rec = s.recorder("schedule", 4)
    nem = Nemesis(lab.backend, rec, fleet)
    g0, g1, g2, g3 = fleet.names
    veth0, veth2 = _host_veth(lab, g0), _host_veth(lab, g2)
    assert fleet.run("true").ok  # all four up before the plan starts
    assert _freezer_state(lab, g1) == "THAWED" and not _has_tbf(veth0)
    plan: list[tuple[float, str, list[str], float]] = [
        (0.5, "pause", [g1], 1.0),
        (2.0, "isolate", [g2], 1.0),
        (3.5, "bandwidth:1mbit", [g0], 1.0),
        (5.0, "kill", [g3], 0.0),
    ]
    t0 = time.time_ns()
    thread = nem.schedule(plan)
    samples: list[tuple[int, bool, bool, bool]] = []
    while thread.is_alive() and time.time_ns() - t0 < 60 * 10**9:
        at = time.time_ns()
        down = Path(f"/sys/class/net/{veth2}/operstate").read_text().strip() == "down"
        samples.append((at, _freezer_state(lab, g1) == "FROZEN", down, _has_tbf(veth0)))
        time.sleep(0.05)
    thread.join(5)
    assert not thread.is_alive()

    rows = rec.timings()
    faults = rows[rows["phase"] == "fault"]
    slack = int(1.5e9)  # how late a busy 2-core host may wake the nemesis thread
    for i, (offset, kind, names, duration) in enumerate(plan):
        op = kind.split(":")[0]
        (row,) = faults[faults["op"] == op].to_dict(orient="records")
        assert row["guest"] == names[0]
        start = int(pd.Timestamp(row["start"]).value)
        assert t0 + int(offset * 1e9) <= start < t0 + int(offset * 1e9) + slack, (kind, start)
        assert float(row["duration_s"]) >= duration
        if kind == "bandwidth:1mbit":
            assert row["error"] == "1mbit"  # the rate is kept with the band
        if op == "kill":
            continue
        end = int(pd.Timestamp(row["end"]).value)
        seen = [t for t, *flags in samples if flags[i]]
        assert seen, f"{kind} was never seen on the host"
        # Sampled before the state is read: a sample may be stamped a little early.
        assert all(start - int(0.2e9) <= t <= end for t in seen), (kind, start, end, seen)
    # The kill: a lost row at the kill, the guest out of the fleet, everyone else fine.
    lost = rows[rows["phase"] == "lost"]
    assert list(lost["guest"]) == [g3] and g3 in fleet.lost
    assert fleet.run("true", names=[g0, g1, g2]).ok
    assert _freezer_state(lab, g1) == "THAWED" and not _has_tbf(veth0)


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
    run = run_scenario(tmp_path, "test_kill.py", KILL_SCENARIO, guests=16)
    assert before.diff(snapshot()) == {}
    t = pd.read_parquet(run / "timings.parquet")
    lost = t[t["phase"] == "lost"]
    assert sorted(lost["guest"]) == ["g003", "g004"]
    kills = t[(t["phase"] == "fault") & (t["op"] == "kill")]
    rt = t[t["op"] == "roundtrip"]
    for g in ("g003", "g004"):
        killed_at = kills[kills["guest"] == g]["start"].iloc[0]
        mine = rt[rt["guest"] == g]
        # No row measured before the kill is missing; afterwards the guest is left out.
        assert (mine[mine["end"] <= killed_at]["ok"]).sum() == 3
        assert mine[mine["start"] > killed_at].empty
    # ...while the 14 others ran the three rounds after the kills too.
    last_kill = kills["end"].max()
    after = rt[rt["start"] > last_kill]
    assert len(after) == 14 * 3 and after["ok"].all()
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
from harness.state import RunState, list_states
cfg = build_config({"guests": sys.argv[1], "reports_dir": sys.argv[2]}, Path(sys.argv[3]))
s = Session(cfg)
print("START", flush=True)
s.lab_up(int(sys.argv[1]))
print("UP", flush=True)
sys.stdin.read()
"""


def _journal_of(pid: int) -> RunState | None:
    """The state journal of the run owned by ``pid`` (None until it has written one)."""
    mine = [st for st in list_states() if st.header.get("pid") == pid]
    return mine[0] if mine else None


def test_sigkill_during_bringup_then_clean_10_times(image: Image, tmp_path: Path) -> None:
    """Kill the owner at a random moment of a 32-guest bring-up; `scalelab clean` must
    remove exactly what it made, every time.

    The moment is "after the journal names K resources" for a random K (and, twice, "once
    all 32 guests answered"), and each kill checks first that the owner was alive and that
    its resources really existed on this host: a kill of a process that had made nothing yet
    (or had already died) would prove nothing about the cleanup.
    """
    before = snapshot()
    rng = random.Random(1234)
    moments: list[int | str] = [rng.randint(1, 200) for _ in range(8)] + ["up", "up"]
    rng.shuffle(moments)
    seen_processes = 0
    after_up = 0  # kills meant for the middle of a bring-up that came after its end
    for cycle, moment in enumerate(moments):
        proc = subprocess.Popen(
            [sys.executable, "-c", UP_SCRIPT, "32", str(tmp_path), str(PROJECT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "START"
        if moment == "up":
            assert proc.stdout.readline().strip() == "UP", cycle
        else:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                journal = _journal_of(proc.pid)
                if journal is not None and len(journal.resources) >= int(moment):
                    break
                if select.select([proc.stdout], [], [], 0.01)[0]:  # all up before K: kill now
                    assert proc.stdout.readline().strip() == "UP", cycle
                    after_up += 1
                    break
            else:
                raise AssertionError(f"cycle {cycle}: {moment} resources never journalled")
        # Just before the kill: the owner is alive, and what its journal names is there.
        assert proc.poll() is None, (cycle, "the owner died before it was killed")
        journal = _journal_of(proc.pid)
        assert journal is not None and journal.resources, cycle
        up = before.diff(snapshot())
        assert up.get("states") == {journal.dir.name}, (cycle, up)
        assert set(up) > {"states"}, (cycle, "nothing but the journal existed", up)
        if moment == "up":
            assert len(up.get("procs", ())) >= 32 and len(up.get("netns", ())) == 32, up
        seen_processes += bool(up.get("procs"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        out = subprocess.run([sys.executable, "-m", "harness.cli", "clean", journal.run_id],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (cycle, out.stdout, out.stderr)
        assert journal.run_id in out.stdout, (cycle, out.stdout)
        left = before.diff(snapshot())
        assert left == {}, (cycle, left)
    assert seen_processes >= 2  # at least the "up" kills had guests running
    assert after_up <= 4, "most kills should land in the middle of a bring-up"
