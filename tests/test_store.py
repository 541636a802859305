from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness.store import (
    METRICS_SCHEMA,
    SAMPLES_SCHEMA,
    TIMINGS_SCHEMA,
    TIMINGS_STREAM,
    Context,
    Store,
    load_timings,
    read_stream,
)


def test_rows_reach_disk_and_parquet(tmp_path: Path) -> None:
    store = Store(tmp_path, Context(run_id="r1"))
    rec = store.scoped(scenario="test_x[n=2]", n_guests=2)
    with rec.measure("op", guest="g000") as m:
        m.exit_status = 0
    with pytest.raises(RuntimeError), rec.measure("boom", guest="g001"):
        raise RuntimeError("bad")
    rec.metric("latency", 0.5, unit="s", guest="g000")
    # Visible on disk before the store is closed.
    assert len((tmp_path / TIMINGS_STREAM).read_text().splitlines()) == 2
    timings, metrics, samples = store.finish()
    t = pq.read_table(timings)
    assert t.schema.equals(TIMINGS_SCHEMA)
    df = t.to_pandas()
    assert list(df["op"]) == ["op", "boom"]
    assert list(df["ok"]) == [True, False]
    assert df.loc[1, "error_class"] == "exception" and "bad" in df.loc[1, "error"]
    assert (df["end"] >= df["start"]).all()
    assert str(df["start"].dt.tz) == "UTC"
    m = pq.read_table(metrics)
    assert m.schema.equals(METRICS_SCHEMA) and m.num_rows == 1
    assert pq.read_table(samples).schema.equals(SAMPLES_SCHEMA)  # none sampled: empty, typed
    assert rec.timings().shape[0] == 2


def test_torn_and_damaged_lines_are_dropped(tmp_path: Path) -> None:
    store = Store(tmp_path, Context(run_id="r1"))
    rec = store.scoped(scenario="s", n_guests=1)
    for i in range(3):
        rec.timing("op", i, i + 10, guest="g")
    store.close()
    with (tmp_path / TIMINGS_STREAM).open("a") as f:
        f.write("this is not json\n")
        f.write('{"run_id": "r1", "op": "half')  # the writer died here
    table = read_stream(tmp_path / TIMINGS_STREAM, TIMINGS_SCHEMA)
    assert table.num_rows == 3


WRITER = """
import sys, time
from pathlib import Path
from harness.store import Store, Context
store = Store(Path(sys.argv[1]), Context(run_id="killme"))
rec = store.scoped(scenario="s", n_guests=1)
i = 0
while True:
    rec.timing("op", i, i + 1, guest=f"g{i % 7}")
    i += 1
    if i % 100 == 0:
        print(i, flush=True)
"""


def test_killed_writer_loses_nothing_already_written(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    reported = 0
    deadline = time.monotonic() + 30
    while reported < 2000 and time.monotonic() < deadline:
        reported = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert reported >= 2000
    df = load_timings(tmp_path)  # no parquet: rebuilt from the stream
    # Every row the writer reported as written is there, in order, none damaged.
    assert len(df) >= reported
    assert list(df["start"].astype("int64")[:reported]) == list(range(reported))
