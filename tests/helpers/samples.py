"""Reading a run's resource samples in tests: the stream as it is, a counter's growth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.store import SAMPLES_SCHEMA, SAMPLES_STREAM, read_stream


def samples_of(run_dir: Path) -> pd.DataFrame:
    """Every sample the run has written so far (read from its stream, while it runs)."""
    df: pd.DataFrame = read_stream(run_dir / SAMPLES_STREAM, SAMPLES_SCHEMA).to_pandas()
    return df


def growth(df: pd.DataFrame, guest: str, resource: str, t0: int, t1: int,
           item: str | None = None) -> float:
    """How much a guest's counter (its ``item``, for a resource with several) grew from its
    last sample before ``t0`` to its last one before ``t1`` (what happened in between,
    however quickly)."""
    rows = df[(df["guest"] == guest) & (df["resource"] == resource)]
    if item is not None:
        rows = rows[rows["item"] == item]
    rows = rows.sort_values("t")
    t = rows["t"].astype("int64")
    before, until = rows[t < t0], rows[t <= t1]
    assert len(before) and len(until) > len(before), (guest, resource)
    return float(until["value"].iloc[-1] - before["value"].iloc[-1])
