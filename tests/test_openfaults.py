"""Windows of faults made by hand (harness.openfaults): kept in the lab directory between
the commands that begin and end them, one row each when they end."""

from __future__ import annotations

import json
from pathlib import Path

from harness.openfaults import FILE, OPS, OpenFaults
from harness.store import Context, Store


def rows(run_dir: Path) -> list[dict[str, object]]:
    text = (run_dir / "timings.jsonl").read_text()
    return [json.loads(ln) for ln in text.splitlines()]


def test_a_window_is_one_row_from_its_begin_to_its_end(tmp_path: Path) -> None:
    store = Store(tmp_path, Context(run_id="r1", scenario="manual-faults", lab="default"))
    windows = OpenFaults(tmp_path)
    windows.begin("bandwidth", ["g000", "g001"], "1mbit")
    first = json.loads((tmp_path / FILE).read_text())["bandwidth"]["g000"]["start_ns"]
    windows.begin("bandwidth", ["g000"], "2mbit")  # again: same start, the new rate
    windows.begin("pause", ["g001"])
    windows.end(["bandwidth"], ["g000"], store.scoped())
    windows.end(["pause"], ["g000"], store.scoped())  # g000 was never paused: no row
    (row,) = rows(tmp_path)
    assert (row["op"], row["guest"], row["error"], row["phase"], row["lab"]) == (
        "bandwidth", "g000", "2mbit", "fault", "default")
    assert row["start"] == first and int(str(row["end"])) >= first
    windows.end(OPS, None, store.scoped())  # what is left: g001's limit and pause
    assert sorted((r["op"], r["guest"], r["error"]) for r in rows(tmp_path)[1:]) == [
        ("bandwidth", "g001", "1mbit"), ("pause", "g001", None)]
    assert not (tmp_path / FILE).exists() and not list(tmp_path.glob("*.tmp"))
    store.close()
