"""Resource telemetry on real netns guests: what each guest spends is seen in its own
samples, sampling goes on through a pause and stops at a kill, and a SIGKILLed run keeps
every sample it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.cli import scalelab
from helpers.labs import lab_session, run_ok
from helpers.samples import growth, sampled_after
from leaks import PROJECT, snapshot

from harness.faults import Nemesis
from harness.image.cache import Image
from harness.lab import Lab
from harness.session import Session
from harness.store import SAMPLES_STREAM, load_samples
from harness.workloads import REMOTE_DIR, Agents

pytestmark = pytest.mark.integration

INTERVAL = 0.25


@pytest.fixture(scope="module")
def lab4(image: Image, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Session, Lab]]:
    with lab_session(tmp_path_factory.mktemp("telemetry"),
                     sample_interval=str(INTERVAL)) as s:
        yield s, s.lab_up(4)


def start_window(s: Session, lab: Lab) -> int:
    """A window's start, once every guest has a sample before it (a lab that has just come
    up may not have had a round yet)."""
    sampled_after(s.run_dir, [g.name for g in lab.guests], time.time_ns())
    return time.time_ns()


def end_window(s: Session, lab: Lab) -> tuple[int, pd.DataFrame]:
    """A window's end, and the samples once every round up to it is written."""
    t1 = time.time_ns()
    return t1, sampled_after(s.run_dir, [g.name for g in lab.live_guests()], t1)


def test_a_cpu_burner_shows_on_its_own_guest(lab4: tuple[Session, Lab]) -> None:
    s, lab = lab4
    burner = lab.guests[1].name
    t0 = start_window(s, lab)
    run_ok(lab, burner, "timeout 3 sh -c 'while :; do :; done' || true")
    t1, df = end_window(s, lab)
    wall = (t1 - t0) / 1e9
    cores = {g.name: growth(df, g.name, "cpu_seconds", t0, t1) / wall for g in lab.guests}
    assert cores[burner] > 0.6, cores  # near one core (2 cores, a busy host: not exactly 1)
    assert all(c < 0.2 for n, c in cores.items() if n != burner), cores
    host = df[df["guest"] == ""]
    assert {"cpu_busy_seconds", "cpu_total_seconds", "load1", "memory_used_bytes",
            "harness_cpu_seconds"} <= set(host["resource"])
    assert set(host[host["resource"] == "cpu_busy_seconds"]["item"]) == {
        f"cpu{i}" for i in range(os.cpu_count() or 1)}


def test_a_transfer_shows_on_both_links(lab4: tuple[Session, Lab]) -> None:
    s, lab = lab4
    src, dst = lab.guests[0], lab.guests[2]
    agents = Agents(lab.require_fleet(), s.recorder("transfer", 4))
    agents.deploy_builtin("transfer")
    k = 20 << 20
    with agents:
        assert agents.serve("tsrv", ["python3", f"{REMOTE_DIR}/transfer.py", "serve", "5999"],
                            names=[dst.name]).ok
        t0 = start_window(s, lab)
        run_ok(lab, src.name, f"python3 {REMOTE_DIR}/transfer.py send {dst.spec.address} 5999 {k}")
        t1, df = end_window(s, lab)
    assert growth(df, src.name, "net_tx_bytes", t0, t1) >= k
    assert growth(df, dst.name, "net_rx_bytes", t0, t1) >= k
    assert growth(df, src.name, "net_tx_packets", t0, t1) >= k / 65536


def test_memory_a_guest_holds_shows(lab4: tuple[Session, Lab]) -> None:
    s, lab = lab4
    g = lab.guests[3].name
    t0 = start_window(s, lab)
    run_ok(lab, g, "python3 -c 'import time; b = bytearray(96 << 20); time.sleep(2)'")
    t1, df = end_window(s, lab)
    mem = df[(df["guest"] == g) & (df["resource"] == "memory_bytes")]
    before = mem[mem["t"].astype("int64") < t0]["value"].iloc[-1]
    during = mem[(mem["t"].astype("int64") >= t0) & (mem["t"].astype("int64") <= t1)]["value"]
    assert during.max() - before >= 64 << 20


def test_samples_go_on_through_a_pause_and_stop_at_a_kill(lab4: tuple[Session, Lab]) -> None:
    s, lab = lab4
    victim = lab.guests[3].name
    nem = Nemesis(lab.backend, s.recorder("pause-kill", 4), lab.require_fleet())
    with nem.paused([victim]):
        t0 = start_window(s, lab)
        time.sleep(6 * INTERVAL)
        t1, df = end_window(s, lab)
    paused = df[(df["guest"] == victim) & (df["resource"] == "cpu_seconds")]
    assert paused["t"].astype("int64").between(t0, t1).sum() >= 3
    nem.kill([victim])
    killed_at = time.time_ns()
    df = sampled_after(s.run_dir, [lab.guests[0].name], killed_at + int(6 * INTERVAL * 1e9))
    mine = df[df["guest"] == victim]["t"].astype("int64")
    assert (mine < killed_at).any()  # what was sampled before the kill is kept
    assert (mine > killed_at + int(2 * INTERVAL * 1e9)).sum() == 0  # and nothing after
    others = df[(df["guest"] == lab.guests[0].name)]["t"].astype("int64")
    assert (others > killed_at + int(2 * INTERVAL * 1e9)).any()  # the others go on


UP_SCRIPT = """
import sys
from pathlib import Path
from harness.config import build_config
from harness.session import Session
cfg = build_config({"guests": "2", "reports_dir": sys.argv[1], "sample_interval": "0.2"},
                   Path(sys.argv[2]))
s = Session(cfg)
s.lab_up(2)
print("UP", s.run_dir, flush=True)
sys.stdin.read()
"""


def test_a_killed_run_keeps_its_samples_and_the_report_rebuilds_them(
        image: Image, tmp_path: Path) -> None:
    before = snapshot()
    proc = subprocess.Popen([sys.executable, "-c", UP_SCRIPT, str(tmp_path), str(PROJECT)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[0] == "UP", line
    run_dir = Path(line[1])
    time.sleep(1.5)
    written = len((run_dir / SAMPLES_STREAM).read_bytes().splitlines())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        assert written > 0
        assert not (run_dir / "samples.parquet").exists()
        out = scalelab("report", str(run_dir))
        assert out.returncode == 0, out.stderr
        rebuilt = load_samples(run_dir)
        assert len(rebuilt) >= written and set(rebuilt["lab"]) >= {"default", ""}
        assert "Resources" in (run_dir / "index.html").read_text()
    finally:
        assert scalelab("clean", run_dir.name).returncode == 0
    assert before.diff(snapshot()) == {}
