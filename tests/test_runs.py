"""Runs with several labs: unique guest names, rows that say their lab, exports covering every
lab, and `scalelab ls/down/clean` acting on a whole run (netns, real sshd and OpenSSH)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import one_clear_line, scalelab, ssh_answers
from helpers.labs import lab_session
from leaks import Snapshot

from harness.image.cache import Image
from harness.lab import Lab
from harness.session import Session
from harness.store import load_timings

pytestmark = pytest.mark.integration


def openssh(config: Path, guest: str, command: str) -> subprocess.CompletedProcess[str]:
    """What a person types: ``ssh -F <run>/ssh_config <guest>``, strict host key checking."""
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", guest,
         command], capture_output=True, text=True, timeout=60)


@pytest.fixture
def two_labs(image: Image, tmp_path: Path, no_leaks: Snapshot
             ) -> Iterator[tuple[Session, Lab, Lab]]:
    with lab_session(tmp_path / "r") as s:
        yield s, s.lab_up(2), s.lab_up(2, name="extra")


def test_two_labs_have_unique_names_rows_and_exports(two_labs: tuple[Session, Lab, Lab]
                                                     ) -> None:
    s, main, extra = two_labs
    assert [g.name for g in main.guests] == ["g000", "g001"]
    assert [g.name for g in extra.guests] == ["extra-g000", "extra-g001"]
    assert extra.run_dir == s.run_dir / "labs" / "extra"
    # Each guest knows its own name; addresses, MACs and keys differ across the labs.
    for lab in (main, extra):
        group = lab.require_fleet().run("hostname")
        assert {n: r.stdout.strip() for n, r in group.results.items()} == {
            g.name: g.name for g in lab.guests}
    specs = [g.spec for g in main.guests + extra.guests]
    assert len({sp.mac for sp in specs}) == len({sp.host_key.public_blob for sp in specs}) == 4
    # Every bring-up row names its lab, and no guest's rows are in two labs.
    t = load_timings(s.run_dir)
    bu = t[t["phase"] == "bringup"]
    assert bu.groupby("guest")["lab"].nunique().eq(1).all()
    assert dict(bu.groupby("lab")["guest"].apply(lambda g: sorted(set(g)))) == {
        "default": ["g000", "g001"], "extra": ["extra-g000", "extra-g001"]}
    # The run's exports reach every guest of both labs with OpenSSH, strictly checked.
    cfg = s.run_dir / "ssh_config"
    known = (s.run_dir / "known_hosts").read_text()
    for g in main.guests + extra.guests:
        assert g.name in known
        out = openssh(cfg, g.name, "hostname")
        assert out.returncode == 0 and out.stdout.strip() == g.name, out.stderr
    # A lab's own files stay with the lab.
    assert "g000 " not in (extra.run_dir / "known_hosts").read_text().replace("extra-g000", "")


def test_ls_and_down_act_on_the_whole_run(two_labs: tuple[Session, Lab, Lab]) -> None:
    s, main, extra = two_labs
    ls = scalelab("ls").stdout
    block = ls.split(s.run_id, 1)[1].split("\n20", 1)[0]  # this run's lines only
    assert ls.count(f"{s.run_id}  ") == 1, ls  # the run once, its labs under it
    assert "running" in block and "default" in block and "extra" in block, ls
    assert "extra-g000 … extra-g001" in block, ls
    # A run whose owner (this process) is alive is not taken down behind its back.
    refused = scalelab("down", s.run_id)
    one_clear_line(refused, s.run_id, "running process")
    assert main.require_fleet().run("true").ok and extra.require_fleet().run("true").ok
    # Kept (what --keep-guests and `scalelab up` do), one `down` takes both labs.
    main.keep()
    extra.keep()
    # `top` on the kept run: every guest of both labs, a busy one first.
    busy = subprocess.Popen(["ssh", "-F", str(s.run_dir / "ssh_config"), "-o", "BatchMode=yes",
                             "extra-g001", "timeout 8 sh -c 'while :; do :; done'"])
    try:
        time.sleep(1)
        top = scalelab("top", s.run_id, "--interval", "2")
    finally:
        busy.wait(timeout=30)
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert lines[0].split()[:3] == ["GUEST", "LAB", "CPU"]
    assert sorted(ln.split()[0] for ln in lines[1:]) == [
        "extra-g000", "extra-g001", "g000", "g001"]
    assert lines[1].split()[:2] == ["extra-g001", "extra"] and float(lines[1].split()[2]) > 0.5
    # Faults by hand on guests of both labs at once, each done by its own lab's backend;
    # `heal` naming no guest heals every lab of the run.
    cfg = s.run_dir / "ssh_config"

    def fault(*argv: str) -> subprocess.CompletedProcess[str]:
        return scalelab("fault", *argv, "--run", s.run_id)

    assert fault("isolate", "g000", "extra-g001").returncode == 0
    assert not any(ssh_answers(cfg, g) for g in ("g000", "extra-g001"))
    assert all(ssh_answers(cfg, g) for g in ("g001", "extra-g000"))
    assert fault("heal").returncode == 0
    assert all(ssh_answers(cfg, g) for g in ("g000", "extra-g001"))
    assert fault("pause", "g001", "extra-g000").returncode == 0  # left paused: ends at down
    one_clear_line(fault("pause", "g001", "extra-g007"), "no guest 'extra-g007'")
    down = scalelab("down")
    assert down.returncode == 0, down.stderr
    assert s.run_id in down.stdout and "default" in down.stdout and "extra" in down.stdout
    assert s.run_id not in scalelab("ls").stdout
    rows = [json.loads(ln) for ln in (s.run_dir / "timings.jsonl").read_text().splitlines()]
    assert sorted((r["lab"], r["op"], r["guest"]) for r in rows if r["phase"] == "fault") == [
        ("default", "isolate", "g000"), ("default", "pause", "g001"),
        ("extra", "isolate", "extra-g001"), ("extra", "pause", "extra-g000")]
    # no_leaks checks that nothing of either lab is left.


def test_clean_all_takes_a_live_run_down(two_labs: tuple[Session, Lab, Lab]) -> None:
    s, _, _ = two_labs
    # Without --all a live run is left alone...
    assert f"{s.run_id}: " not in scalelab("clean").stdout
    assert s.run_id in scalelab("ls").stdout
    # ...with it, every run goes (on a test machine only this suite's labs are up).
    out = scalelab("clean", "--all")
    assert out.returncode == 0, out.stderr
    assert f"{s.run_id}: " in out.stdout and "of 2 lab(s) removed" in out.stdout, out.stdout
    assert s.run_id not in scalelab("ls").stdout
