"""The facts a report states about a run: headline summary, environment, raw files."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from harness.report.rundata import RUN_INFO, RunData
from harness.report.summary import success_rate, workload_rows
from harness.report.templating import fmt_bytes, fmt_duration, fmt_percent
from harness.report.zones import format_time, offsets_in_span, zone_name
from harness.store import (
    METRICS_PARQUET,
    METRICS_STREAM,
    SAMPLES_PARQUET,
    SAMPLES_STREAM,
    TIMINGS_PARQUET,
    TIMINGS_STREAM,
)

RAW_FILES = (
    (TIMINGS_PARQUET, "all timing rows (Parquet)"),
    (METRICS_PARQUET, "agent metrics (Parquet)"),
    (TIMINGS_STREAM, "timing rows as recorded (JSON lines)"),
    (METRICS_STREAM, "agent metrics as recorded (JSON lines)"),
    (SAMPLES_PARQUET, "resource samples of guests and host (Parquet)"),
    (SAMPLES_STREAM, "resource samples as recorded (JSON lines)"),
    (RUN_INFO, "run description"),
    ("ssh_config", "ssh -F config for the guests"),
    ("known_hosts", "pinned guest host keys"),
)


def parse_time(value: Any) -> pd.Timestamp | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = pd.Timestamp(value)
    except ValueError:
        return None
    return t.tz_localize("UTC") if t.tzinfo is None else t


def href(target: Path, out_dir: Path) -> str:
    return quote(Path(os.path.relpath(target, out_dir)).as_posix())


def backend_text(info: dict[str, Any]) -> str:
    backend = info.get("backend")
    if isinstance(backend, dict):
        name = str(backend.get("name") or "?")
        opts = backend.get("options") or {}
        parts = [f"{k}={v}" for k, v in opts.items()] if isinstance(opts, dict) else [str(opts)]
        if backend.get("accel"):
            parts.append(f"accel={backend['accel']}")
        return f"{name} ({', '.join(parts)})" if parts else name
    return str(backend) if backend else "unknown"


def environment_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """run.json flattened into (what, value) lines; unknown keys are shown too, as JSON."""
    rows: list[tuple[str, str]] = []
    shown = {"run_id", "started_utc", "ended_utc", "report_tz", "outcome", "guests", "tests",
             "labs"}

    def add(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            rows.append((label, value if isinstance(value, str) else json.dumps(value)))

    cmd = info.get("command_line")
    add("command line", shlex.join(map(str, cmd)) if isinstance(cmd, list) else cmd)
    add("backend", backend_text(info) if info.get("backend") else None)
    machine = info.get("machine")
    if isinstance(machine, dict):
        for key, value in machine.items():
            if key == "memory_bytes" and isinstance(value, int | float):
                value = fmt_bytes(value)
            add(f"machine {key}", value)
    for key in ("kernel", "python", "git_commit"):
        add(key.replace("_", " "), info.get(key))
    image = info.get("image")
    if isinstance(image, dict):
        for key, value in image.items():
            if key in {"size", "size_bytes"} and isinstance(value, int | float):
                value = fmt_bytes(value)
            add(f"image {key}", value)
    packages = info.get("packages")
    if isinstance(packages, dict):
        add("packages", ", ".join(f"{k} {v}" for k, v in sorted(packages.items())))
    offsets = info.get("clock_offsets")
    if isinstance(offsets, dict):
        add(
            "clock offsets",
            ", ".join(
                f"{h}: {float(v) * 1000:+.2f} ms"
                for h, v in sorted(offsets.items())
                if isinstance(v, int | float)
            ),
        )
    shown |= {
        "command_line",
        "backend",
        "machine",
        "kernel",
        "python",
        "git_commit",
        "image",
        "packages",
        "clock_offsets",
    }
    for key in sorted(set(info) - shown):
        add(key, info[key])
    return rows


def run_summary(data: RunData, zone: dt.tzinfo) -> list[tuple[str, str]]:
    """The headline facts: what ran, where, for how long, and how well."""
    t, info = data.timings, data.info
    started = parse_time(info.get("started_utc")) or t["start"].min()
    ended = parse_time(info.get("ended_utc")) or t["end"].max()
    guests = info.get("guests")
    listed = [n for n in guests if isinstance(n, int)] if isinstance(guests, list) else []
    ns = listed or sorted({int(n) for n in t["n_guests"].unique() if n})
    wl = workload_rows(t)
    rate = success_rate(t)
    rows = [
        ("run", data.run_id),
        ("time zone", f"{zone_name(zone)} ({' → '.join(offsets_in_span(zone, started, ended))})"),
        ("started", format_time(started, zone)),
        ("ended", format_time(ended, zone)),
        ("duration", fmt_duration((ended - started).total_seconds())),
        ("N (guests)", ", ".join(map(str, ns)) or "unknown"),
        ("backend", backend_text(info)),
        ("guests seen", f"{t.loc[t['guest'] != '', 'guest'].nunique():,}"),
        (
            "workload operations",
            f"{len(wl):,} ({int((~wl['ok']).sum()):,} failed)" if len(wl) else "none",
        ),
        ("success rate", fmt_percent(rate, 2) if rate is not None else "no workload"),
        ("guests lost", f"{int((t['phase'] == 'lost').sum()):,}"),
        ("faults injected", f"{int((t['phase'] == 'fault').sum()):,}"),
    ]
    outcome = info.get("outcome")
    if isinstance(outcome, dict) and outcome:
        rows.append(("tests", ", ".join(f"{v} {k}" for k, v in outcome.items())))
    return rows


def not_passed(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's tests that did not pass (skipped, failed, errors), each with its reason."""
    tests = info.get("tests")
    if not isinstance(tests, list):
        return []
    return [t for t in tests if isinstance(t, dict) and t.get("outcome") != "passed"]


def raw_files(run_dir: Path, out_dir: Path) -> list[dict[str, Any]]:
    files = []
    for name, what in RAW_FILES:
        path = run_dir / name
        if path.exists():
            files.append(
                {
                    "name": name,
                    "what": what,
                    "href": href(path, out_dir),
                    "size": path.stat().st_size,
                }
            )
    return files
