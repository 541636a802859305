"""Hostile input: huge, binary or malformed agent output, nasty file names, corrupt state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import scalelab
from leaks import PROJECT

from harness.config import build_config
from harness.image.cache import Image
from harness.lab import Lab
from harness.session import Session
from harness.ssh import MAX_OUTPUT
from harness.workloads import REMOTE_DIR, Agents, parse_agent_output

NASTY_AGENT = r"""
import json, sys
print(json.dumps({"metric": "good", "value": 1.5, "unit": "s"}))
print('{"metric": "broken", "value": ')            # malformed JSON
print(json.dumps({"metric": "nan", "value": "NaN"}))  # not a finite number
print(json.dumps({"metric": "novalue"}))            # no value
sys.stdout.flush()
sys.stdout.buffer.write(bytes(range(256)) + b"\n")  # binary
sys.stdout.buffer.write(b"x" * (20 << 20) + b"\n")  # 20 MiB in one line
print(json.dumps({"metric": "after", "value": 2}))
"""


def test_parse_agent_output_is_total() -> None:
    parsed = parse_agent_output(
        '{"metric": "a", "value": 1}\nplain\n{"metric": 5, "value": "2.5", "t": 1.0}\n'
        '{"metric": "x", "value": [1]}\n\x00\xff garbage {\n{"value": 3}\n'
    )
    assert [(m["metric"], m["value"]) for m in parsed.metrics] == [("a", 1.0), ("5", 2.5)]
    assert parsed.metrics[1]["t_ns"] == 1_000_000_000
    assert len(parsed.log) == 4


@pytest.fixture(scope="module")
def lab2(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, Lab]]:
    cfg = build_config({"guests": "2", "reports_dir": str(tmp_path_factory.mktemp("r"))},
                       PROJECT)
    s = Session(cfg, image=image)
    try:
        yield s, s.lab_up(2)
    finally:
        s.finish(render=False)


@pytest.mark.integration
def test_huge_binary_malformed_agent_output(lab2: tuple[Session, Lab], tmp_path: Path) -> None:
    s, lab = lab2
    rec = s.recorder("hostile", 2)
    agents = Agents(lab.require_fleet(), rec, log_dir=tmp_path / "logs")
    script = tmp_path / "nasty agent; $(touch pwned) 'quoted'.py"  # spaces and metacharacters
    script.write_text(NASTY_AGENT)
    remote = agents.deploy(script)
    assert remote == f"{REMOTE_DIR}/{script.name}"
    group = agents.run("nasty", ["python3", remote], timeout=120)
    assert group.ok, group.failed
    for name, res in group.results.items():
        assert "more bytes of output dropped" in res.stdout
        assert len(res.stdout) < MAX_OUTPUT + 4096
        assert lab.require_fleet().run("test ! -e pwned && test ! -e /root/pwned",
                                       names=[name])[name].ok
    m = rec.metrics()
    m = m[m["scenario"] == "hostile"]
    assert sorted(set(m["metric"])) == ["good"]  # "after" lies beyond the cap; junk dropped
    assert len(m) == 2
    logs = sorted((tmp_path / "logs").iterdir())
    assert len(logs) == 2 and all(p.stat().st_size > 1 << 20 for p in logs)


def test_corrupt_state_files(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "garbage").mkdir(parents=True)
    (root / "garbage" / "state.jsonl").write_bytes(b"\x00\xff{{{ not json\n\x89PNG\n")
    (root / "torn").mkdir()
    (root / "torn" / "state.jsonl").write_text(
        '{"header": {"run_id": "torn", "pid": 999999999, "pid_start": 1}}\n'
        f'{{"kind": "dir", "path": "{tmp_path / "made-by-torn"}"}}\n'
        '{"kind": "link", "na'
    )
    (tmp_path / "made-by-torn").mkdir()
    (tmp_path / "not-ours").mkdir()
    env = {"SCALELAB_STATE_ROOT": str(root)}
    ls = scalelab("ls", env=env)
    assert ls.returncode == 0 and "garbage" in ls.stdout and "torn" in ls.stdout, ls.stderr
    clean = scalelab("clean", env=env)
    assert clean.returncode == 0, clean.stderr
    assert "Traceback" not in clean.stderr
    assert not (tmp_path / "made-by-torn").exists()  # listed: removed
    assert (tmp_path / "not-ours").exists()  # not listed: untouched
    assert not any(root.iterdir())
