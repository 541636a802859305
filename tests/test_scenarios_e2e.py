"""`pytest scenarios/` end to end on the netns backend: report directory, rows, no leftovers."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.cli import scalelab
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


def lab_guests(t: pd.DataFrame) -> dict[str, set[str]]:
    """lab → the guests that have bring-up rows in it."""
    bu = t[(t["phase"] == "bringup") & (t["guest"] != "")]
    return {str(lab): set(g["guest"]) for lab, g in bu.groupby("lab")}


def check_bringup_rows(t: pd.DataFrame) -> None:
    """Per lab, every guest went through the same steps once each, ending authenticated
    with a first command answered; no guest has rows in two labs."""
    bu = t[(t["phase"] == "bringup") & (t["guest"] != "")]
    assert bu.groupby("guest")["lab"].nunique().eq(1).all()
    for lab, g in bu.groupby("lab"):
        kinds = {tuple(sorted(map(str, ops))) for _, ops in g.groupby("guest")["op"]}
        assert len(kinds) == 1, (lab, kinds)  # the same steps for every guest of the lab
        (steps,) = kinds
        assert {"started", "auth", "first_command"} <= set(steps), steps
        assert len(steps) == len(set(steps))  # each once


def check_exports(run: Path, guests: set[str]) -> None:
    """The run's ssh_config and known_hosts name every guest of every lab that was up."""
    cfg = (run / "ssh_config").read_text()
    hosts = {ln.split()[1] for ln in cfg.splitlines() if ln.startswith("Host ")} - {"*"}
    assert hosts == guests
    known = {ln.split()[0].split(",")[0] for ln in (run / "known_hosts").read_text().splitlines()
             if ln.strip()}
    assert known == guests


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
    check_bringup_rows(t)
    # Two labs (the default image and the nginx recipe's), 8 guests each, names apart.
    labs = lab_guests(t)
    assert labs["default"] == {f"g{i:03d}" for i in range(8)}
    assert labs["nginx"] == {f"nginx-g{i:03d}" for i in range(8)}
    check_exports(run, labs["default"] | labs["nginx"])
    rt = t[t["op"] == "roundtrip"]
    assert rt.groupby("guest").size().eq(10).all() and rt["guest"].nunique() == 8
    assert rt["ok"].all()
    m = pd.read_parquet(run / "metrics.parquet")
    for metric in ("cpu_seconds", "write_latency", "transfer_throughput", "request_latency",
                   "upper_bytes_after_writes", "wrk_request_rate"):
        assert (m["metric"] == metric).any(), metric
    assert m[m["metric"] == "cpu_seconds"]["guest"].nunique() == 8
    assert m[m["metric"] == "request_latency"]["guest"].nunique() == 7  # N-1 clients
    assert set(m[m["metric"] == "wrk_request_rate"]["lab"]) == {"nginx"}
    assert not (run / "id_ed25519").exists()


def test_sweep_every_scenario_1_2_4(image: Image, tmp_path: Path) -> None:
    """The whole of scenarios/ as a sweep: every scenario passes at every N, with rows for
    every one of its N guests; servers of one N never get in the way of the next."""
    before = snapshot()
    res = run_scenarios(tmp_path, "--guests=1,2,4")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert before.diff(snapshot()) == {}
    run = (tmp_path / "latest").resolve()
    info = json.loads((run / "run.json").read_text())
    tests = info["tests"]
    assert {t["n_guests"] for t in tests} == {1, 2, 4}
    not_passed = [t for t in tests if t["outcome"] != "passed"]
    # The skips of the sweep: the scenarios whose roles need two guests (a server and its
    # clients, receivers and senders) at N=1. Each is said, with its reason, in run.json and
    # in the report.
    assert sorted((t["test"], t["outcome"]) for t in not_passed) == [
        ("test_client_server_load[n=1]", "skipped"),
        ("test_guest_to_guest_transfer[n=1]", "skipped"),
        ("test_nginx_under_wrk[n=1]", "skipped")]
    page = (run / "index.html").read_text()
    for t in not_passed:
        assert "need at least 2 guest(s); there are 1" in t["reason"], t
        assert html.escape(t["reason"], quote=False) in page or t["reason"] in page, t
    scenarios = {t["test"] for t in tests if t["outcome"] == "passed"}
    bases = {name.split("[")[0] for name in scenarios}
    assert len(scenarios) == 3 * len(bases) - 3  # every scenario at every N but those skips
    t = pd.read_parquet(run / "timings.parquet")
    check_bringup_rows(t)
    for name in scenarios:
        n = int(name.split("[n=")[1].rstrip("]"))
        rows = t[(t["scenario"] == name) & (t["guest"] != "") & (t["phase"] != "bringup")]
        if name.startswith("test_boot_storm"):
            rows = t[(t["scenario"] == name) & (t["guest"] != "")]
        assert rows["guest"].nunique() == n, (name, sorted(set(rows["guest"])))
        assert rows["lab"].nunique() == 1, name
        assert rows["ok"].all(), rows[~rows["ok"]][["guest", "op", "error"]]
    # Servers started by a scenario were stopped at its end, at every N.
    starts = t[t["op"].str.endswith("-server_start")]
    stops = t[t["op"].str.endswith("-server_stop")]
    assert len(starts) == len(stops) > 0
    assert set(zip(starts["scenario"], starts["guest"], strict=True)) == set(
        zip(stops["scenario"], stops["guest"], strict=True))
    rt = t[t["op"] == "roundtrip"]
    assert rt.groupby("n_guests")["guest"].nunique().to_dict() == {1: 1, 2: 2, 4: 4}
    boot = t[(t["op"] == "auth") & t["scenario"].str.startswith("test_boot_storm")]
    assert boot.groupby("n_guests")["guest"].nunique().to_dict() == {1: 1, 2: 2, 4: 4}
    assert boot.groupby("n_guests")["lab"].nunique().eq(1).all()


def test_kept_run_with_two_labs_goes_with_one_down(image: Image, tmp_path: Path) -> None:
    """`--keep-guests` keeps every lab of the run; `ssh -F` reaches each lab's guests with
    strict checking; `scalelab ls` shows the run once; one `scalelab down` leaves nothing."""
    before = snapshot()
    res = run_scenarios(tmp_path, "--guests=2", "--keep-guests")
    try:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        run = (tmp_path / "latest").resolve()
        assert f"take it all down with `scalelab down {run.name}`" in res.stdout
        assert before.diff(snapshot()).get("netns")
        cfg = run / "ssh_config"
        for guest in ("g000", "g001", "nginx-g000", "nginx-g001"):
            out = subprocess.run(
                ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", guest, "hostname"],
                capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and out.stdout.strip() == guest, out.stderr
        ls = scalelab("ls").stdout
        assert ls.count(f"{run.name}  ") == 1 and "kept up" in ls, ls
        assert "g000 … g001" in ls and "nginx-g000 … nginx-g001" in ls, ls
        # `clean` leaves a kept run alone.
        assert scalelab("clean").returncode == 0
        assert before.diff(snapshot()).get("netns")
    finally:
        down = scalelab("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert run.name in down.stdout
    assert before.diff(snapshot()) == {}
    assert run.name not in scalelab("ls").stdout


FAILING = """
from harness.workloads import REMOTE_DIR

def test_fails_in_the_middle(agents, recorder, n_guests):
    recorder.timing("before_failure", 1, 2)
    agents.deploy_builtin("reqload")
    first = agents.fleet.names[0]
    serve = ["python3", REMOTE_DIR + "/reqload.py", "serve", "5400"]
    group = agents.serve("user-server", serve, names=[first])
    assert group.ok, group.reason(first)  # the port is free again at every N
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
    # The server of the failed N was stopped too, so the next N could start its own.
    stops = t[t["op"] == "user-server_stop"]
    assert stops["ok"].all() and set(stops["n_guests"]) == {1, 2, 3}


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


WATCHED = """
import time

def test_long_experiment(fleet):
    assert fleet.run("true").ok
    time.sleep(8)
    assert fleet.run("true").ok
"""


def test_live_report_is_rendered_while_the_run_goes_on(image: Image, tmp_path: Path) -> None:
    """--live-report: index.html appears and is replaced during the run, saying it is live;
    the final page, after the run, no longer does."""
    before = snapshot()
    scen = tmp_path / "scen"
    scen.mkdir()
    (scen / "test_watched.py").write_text(WATCHED)
    reports = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(scen), "--guests=2", "--live-report=1",
         "--sample-interval=0.5", f"--reports-dir={reports}", "-p", "no:cacheprovider", "-q",
         f"--rootdir={PROJECT}"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        page = reports / "latest" / "index.html"
        if page.exists():
            text = page.read_text()
            assert "</html>" in text  # replaced whole, never half written
            if "the run is still going" in text:
                seen.add(page.stat().st_ino)
        time.sleep(0.3)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert len(seen) >= 2  # rendered more than once while running (a new file each time)
    run = (reports / "latest").resolve()
    final = (run / "index.html").read_text()
    assert "the run is still going" not in final and "Resources" in final
    info = json.loads((run / "run.json").read_text())
    assert info["live_report"]["renders"] >= 2 and info["live_report"]["last_error"] is None
    assert before.diff(snapshot()) == {}
