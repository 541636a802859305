from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from harness import state
from harness.state import RunState, list_states, proc_start_time


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path / "state")
    return tmp_path / "state"


def test_journal_roundtrip_and_corruption(state_root: Path) -> None:
    st = RunState.create("run1", backend="netns")
    st.record("dir", path="/nonexistent/x")
    st.record("link", name="slbnothere")
    with st.path.open("a") as f:
        f.write("{garbage\n")
        f.write('{"kind": "dir", "path": "/nonexistent/y"')  # torn last line
    loaded = RunState.load(st.path)
    assert loaded.run_id == "run1"
    assert [r.kind for r in loaded.resources] == ["dir", "link"]
    assert loaded.owner_alive  # this process
    assert [s.run_id for s in list_states()] == ["run1"]


@pytest.mark.integration  # it mounts a tmpfs
def test_teardown_removes_only_what_was_recorded(state_root: Path, tmp_path: Path,
                                                  root: None) -> None:
    mine = tmp_path / "mine"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    st = RunState.create("run2")
    st.record("mount", path=str(mine))
    mine.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "t", str(mine)], check=True)
    st.record("dir", path=str(mine))
    proc = subprocess.Popen(["sleep", "600"])
    st.record("process", pid=proc.pid, start=proc_start_time(proc.pid))
    assert st.remove_all() == []
    assert proc_start_time(proc.pid) is None  # killed (and reaped by the teardown)
    proc.wait(timeout=5)
    assert not mine.exists() and theirs.exists()
    assert not st.dir.exists()


def test_dead_owner_and_reused_pid(state_root: Path) -> None:
    st = RunState.create("run3")
    header = {**st.header, "pid": 1, "pid_start": 12345678}  # pid 1 started at another time
    st.path.write_text(json.dumps({"header": header}) + "\n")
    assert not RunState.load(st.path).owner_alive
    # A process record whose pid now belongs to another process is not killed.
    victim = subprocess.Popen(["sleep", "600"])
    try:
        st.record("process", pid=victim.pid, start=(proc_start_time(victim.pid) or 0) + 1)
        RunState.load(st.path).remove_all()
        time.sleep(0.1)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
