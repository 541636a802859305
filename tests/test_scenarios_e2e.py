"""`pytest scenarios/` end to end on the netns backend: report directory, rows, no leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from leaks import PROJECT, snapshot

from harness.image.cache import Image

pytestmark = pytest.mark.integration


def run_scenarios(reports: Path, *args: str, timeout: float = 900
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/", f"--reports-dir={reports}",
         "-p", "no:cacheprovider", "-q", *args],
        cwd=PROJECT, capture_output=True, text=True, timeout=timeout,
    )


def test_scenarios_8_guests(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    res = run_scenarios(tmp_path, "--guests=8", "--report-tz=America/El_Salvador")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert before.diff(snapshot()) == {}
    run = (tmp_path / "latest").resolve()
    for f in ("index.html", "timings.parquet", "metrics.parquet", "run.json", "ssh_config",
              "known_hosts"):
        assert (run / f).is_file(), f
    info = json.loads((run / "run.json").read_text())
    assert info["guests"] == [8] and info["backend"]["name"] == "netns"
    assert info["image"]["digest"] == image.digest
    assert info["report_tz"] == "America/El_Salvador"
    assert info["outcome"]["failed"] == 0 and info["outcome"]["passed"] >= 6
    t = pd.read_parquet(run / "timings.parquet")
    # Every guest has each bring-up phase once in the main lab.
    main = t[(t["phase"] == "bringup") & (t["scenario"] == "bringup")]
    assert main.groupby("guest")["op"].nunique().eq(6).all() and main["guest"].nunique() == 8
    rt = t[t["op"] == "roundtrip"]
    assert rt.groupby("guest").size().eq(10).all() and rt["guest"].nunique() == 8
    assert rt["ok"].all()
    m = pd.read_parquet(run / "metrics.parquet")
    for metric in ("cpu_seconds", "write_latency", "transfer_throughput", "request_latency",
                   "upper_bytes_after_writes"):
        assert (m["metric"] == metric).any(), metric
    assert m[m["metric"] == "cpu_seconds"]["guest"].nunique() == 8
    assert m[m["metric"] == "request_latency"]["guest"].nunique() == 7  # N-1 clients
    assert not (run / "id_ed25519").exists()


def test_sweep_1_2_4(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    res = run_scenarios(tmp_path, "--guests=1,2,4", "-k", "roundtrip or boot_storm")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert before.diff(snapshot()) == {}
    run = (tmp_path / "latest").resolve()
    t = pd.read_parquet(run / "timings.parquet")
    rt = t[t["op"] == "roundtrip"]
    assert rt.groupby("n_guests")["guest"].nunique().to_dict() == {1: 1, 2: 2, 4: 4}
    assert set(rt["scenario"]) == {f"test_ssh_roundtrip[n={n}]" for n in (1, 2, 4)}
    boot = t[(t["op"] == "auth") & t["scenario"].str.startswith("test_boot_storm")]
    assert boot.groupby("n_guests")["guest"].nunique().to_dict() == {1: 1, 2: 2, 4: 4}


FAILING = """
import pytest

def test_fails_in_the_middle(fleet, recorder, n_guests):
    recorder.timing("before_failure", 1, 2)
    fleet.run("true")
    if n_guests == 2:
        raise RuntimeError("scenario broke")
"""


def test_failing_scenario_keeps_timings(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    scen = tmp_path / "scen"
    scen.mkdir()
    (scen / "test_failing.py").write_text(FAILING)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(scen), "--guests=1,2,3",
         f"--reports-dir={tmp_path / 'r'}", "-p", "no:cacheprovider", "-q",
         f"--rootdir={PROJECT}"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 1, res.stdout
    assert "1 failed, 2 passed" in res.stdout
    assert before.diff(snapshot()) == {}
    t = pd.read_parquet(tmp_path / "r" / "latest" / "timings.parquet")
    assert (t["op"] == "before_failure").sum() == 3


SLOW = """
import time

def test_slow(fleet):
    print("SCENARIO RUNNING", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_scenario_takes_guests_down(image: Image, tmp_path: Path,
                                                  sig: signal.Signals) -> None:
    before = snapshot()
    scen = tmp_path / "scen"
    scen.mkdir()
    (scen / "test_slow.py").write_text(SLOW)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(scen), "--guests=4", "-s",
         f"--reports-dir={tmp_path / 'r'}", "-p", "no:cacheprovider", f"--rootdir={PROJECT}"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "SCENARIO RUNNING" in line or time.monotonic() > deadline:
            break
    assert before.diff(snapshot()).get("netns")  # the lab is up
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert before.diff(snapshot()) == {}, out
    assert (tmp_path / "r" / "latest" / "timings.parquet").is_file()
