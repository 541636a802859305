"""Loading one run directory for the report: ``run.json`` plus the two tables, tidied up."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError
from harness.report.resources import tidy_samples
from harness.report.scenarios import base_scenario
from harness.store import (
    METRICS_PARQUET,
    METRICS_SCHEMA,
    METRICS_STREAM,
    SAMPLES_PARQUET,
    SAMPLES_STREAM,
    TIMINGS_PARQUET,
    TIMINGS_SCHEMA,
    TIMINGS_STREAM,
    load_metrics,
    load_samples,
    load_timings,
    write_parquet,
)

RUN_INFO = "run.json"


@dataclass
class RunData:
    """A run as the report sees it; ``timings`` gains a ``base`` column (scenario without N)."""

    run_dir: Path
    info: dict[str, Any]
    timings: pd.DataFrame
    metrics: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    #: Resource samples (harness.telemetry); empty for runs without them.
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def run_id(self) -> str:
        rid = self.info.get("run_id")
        if isinstance(rid, str) and rid:
            return rid
        ids = self.timings["run_id"].dropna().unique()
        return str(ids[0]) if len(ids) else self.run_dir.name


def read_run_info(run_dir: Path, warnings: list[str]) -> dict[str, Any]:
    """``run.json`` as a dict; a missing or damaged file is an empty dict plus a warning."""
    path = run_dir / RUN_INFO
    if not path.exists():
        warnings.append(f"{RUN_INFO} is missing: environment details are unknown")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warnings.append(f"{RUN_INFO} could not be read ({exc}): environment details are unknown")
        return {}
    if not isinstance(data, dict):
        warnings.append(f"{RUN_INFO} is not a JSON object: environment details are unknown")
        return {}
    return data


def check_run_dir(run_dir: Path) -> None:
    """Raise a one-line :class:`UserError` unless ``run_dir`` looks like a run with timings."""
    if not run_dir.exists():
        raise UserError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (expected reports/<run_id>/)")
    if not (run_dir / TIMINGS_PARQUET).exists() and not (run_dir / TIMINGS_STREAM).exists():
        raise UserError(
            f"{run_dir} has no timings ({TIMINGS_PARQUET} or {TIMINGS_STREAM}): "
            "is it a scalelab run directory?"
        )


def _rebuild_parquet(run_dir: Path, warnings: list[str]) -> None:
    """Write the Parquet files an interrupted run never wrote, from its streams."""
    pairs = ((TIMINGS_PARQUET, TIMINGS_STREAM), (METRICS_PARQUET, METRICS_STREAM),
             (SAMPLES_PARQUET, SAMPLES_STREAM))
    missing = [p for p, s in pairs if not (run_dir / p).exists() and (run_dir / s).exists()]
    # write_parquet rewrites both files: never let a lost stream overwrite a good Parquet file.
    unsafe = [p for p, s in pairs if (run_dir / p).exists() and not (run_dir / s).exists()]
    if not missing or unsafe:
        return
    try:
        write_parquet(run_dir)
    except OSError as exc:
        warnings.append(f"could not write Parquet files into {run_dir} ({exc}); read the streams")
        return
    warnings.append(
        f"rebuilt {', '.join(missing)} from the append-only streams (the run did not end cleanly)"
    )


def _with_columns(df: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Add any schema column an older writer did not write, as nulls."""
    for name in names:
        if name not in df.columns:
            df[name] = None
    return df


def tidy_timings(df: pd.DataFrame) -> pd.DataFrame:
    """Fill what may be missing and add ``base``; never changes a recorded value."""
    df = _with_columns(df, TIMINGS_SCHEMA.names)
    for col in ("start", "end"):
        df[col] = pd.to_datetime(df[col], utc=True)
    df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce")
    missing = df["duration_s"].isna()
    if missing.any():
        df.loc[missing, "duration_s"] = (df["end"] - df["start"])[missing].dt.total_seconds()
    # A row without ``ok`` is a success unless it names an error class.
    df["ok"] = df["ok"].astype("boolean").fillna(df["error_class"].isna()).astype(bool)
    df["n_guests"] = pd.to_numeric(df["n_guests"], errors="coerce").fillna(0).astype("int64")
    for col in ("scenario", "lab", "guest", "phase", "op"):
        df[col] = df[col].fillna("").astype(str).astype("category")
    for col in ("run_id", "lab_host", "error_class", "error"):
        df[col] = df[col].astype("category")
    # Categories make every later filter and group-by move integer codes, not strings; a
    # million rows have only a few thousand distinct names.
    df["base"] = (
        df["scenario"]
        .map({name: base_scenario(str(name)) for name in df["scenario"].cat.categories})
        .astype("category")
    )
    return df


def tidy_metrics(df: pd.DataFrame) -> pd.DataFrame:
    df = _with_columns(df, METRICS_SCHEMA.names)
    df["t"] = pd.to_datetime(df["t"], utc=True)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    for col in ("guest", "lab", "metric", "unit", "scenario"):
        df[col] = df[col].fillna("").astype(str)
    return df.dropna(subset=["t", "value"])


def load_run(run_dir: Path, *, rebuild_parquet: bool) -> RunData:
    """Load a run; with ``rebuild_parquet``, first write missing Parquet files from the streams."""
    check_run_dir(run_dir)
    warnings: list[str] = []
    info = read_run_info(run_dir, warnings)
    if rebuild_parquet:
        _rebuild_parquet(run_dir, warnings)
    timings = load_timings(run_dir)
    if timings.empty:
        raise UserError(f"{run_dir} has no timing rows: the run recorded nothing to report")
    return RunData(
        run_dir=run_dir,
        info=info,
        timings=tidy_timings(timings),
        metrics=tidy_metrics(load_metrics(run_dir)),
        samples=tidy_samples(load_samples(run_dir)),
        warnings=warnings,
    )
