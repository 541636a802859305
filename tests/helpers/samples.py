"""Reading a run's resource samples in tests: the stream as it is, a counter's growth."""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from harness.store import SAMPLES_SCHEMA, SAMPLES_STREAM, read_stream


def samples_of(run_dir: Path) -> pd.DataFrame:
    """Every sample the run has written so far (read from its stream, while it runs)."""
    df: pd.DataFrame = read_stream(run_dir / SAMPLES_STREAM, SAMPLES_SCHEMA).to_pandas()
    return df


def sampled_after(run_dir: Path, guests: Collection[str], t_ns: int,
                  timeout: float = 30.0) -> pd.DataFrame:
    """The run's samples once each of ``guests`` has one stamped after ``t_ns``.

    A round is stamped when it starts and written when it ends, one round after another, so
    once a row after ``t_ns`` is in the stream every round before it is too: what a test
    reads of ``[t0, t1]`` is then whole, however late the sampler ran on a busy host (a
    read right after ``t1`` can miss the round under way, or find no round before ``t0`` in
    a lab that came up a moment earlier)."""
    deadline = time.monotonic() + timeout
    while True:
        df = samples_of(run_dir)
        late = df[df["t"].astype("int64") > t_ns]
        missing = set(guests) - set(late["guest"])
        if not missing:
            return df
        assert time.monotonic() < deadline, f"no sample after {t_ns} in {timeout} s: {missing}"
        time.sleep(0.05)


def growth(df: pd.DataFrame, guest: str, resource: str, t0: int, t1: int,
           item: str | None = None) -> float:
    """How much a guest's counter (its ``item``, for a resource with several) grew from its
    last sample before ``t0`` to its first one from ``t1`` on: all that happened in between,
    however quickly (a transfer over in less than an interval) — read the samples with
    :func:`sampled_after` ``t1``, so that the sample after it is there."""
    rows = df[(df["guest"] == guest) & (df["resource"] == resource)]
    if item is not None:
        rows = rows[rows["item"] == item]
    rows = rows.sort_values("t")
    t = rows["t"].astype("int64")
    before, after = rows[t < t0], rows[t >= t1]
    assert len(before) and len(after), (guest, resource, len(before), len(after))
    return float(after["value"].iloc[0] - before["value"].iloc[-1])
