"""``render_report``: one run directory in, one self-contained ``index.html`` (and plots) out."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pandas as pd

from harness.report import plots
from harness.report.export import PLOTS_DIR, PlotFile, save_figure, slug
from harness.report.rundata import RunData, load_run
from harness.report.scenarios import base_scenario
from harness.report.summary import (
    Knee,
    bringup_stats,
    failures,
    fault_rows,
    knees,
    lost_guests,
    series_stats,
    success_rate,
    workload_rows,
)
from harness.report.templating import environment, write_page
from harness.report.zones import offsets_in_span, zone_for_run, zone_name
from harness.store import (
    METRICS_PARQUET,
    METRICS_STREAM,
    TIMINGS_PARQUET,
    TIMINGS_STREAM,
)

INDEX = "index.html"
MAX_GANTTS = 6  # one per bring-up (scenario, N); the largest N are the interesting ones
RAW_FILES = (
    (TIMINGS_PARQUET, "all timing rows (Parquet)"),
    (METRICS_PARQUET, "agent metrics (Parquet)"),
    (TIMINGS_STREAM, "timing rows as recorded (JSON lines)"),
    (METRICS_STREAM, "agent metrics as recorded (JSON lines)"),
    ("run.json", "run description"),
    ("ssh_config", "ssh -F config for the guests"),
    ("known_hosts", "pinned guest host keys"),
)


@dataclass
class ScenarioSection:
    """What the template shows for one workload series (scenario base, op)."""

    title: str
    anchor: str
    op: str
    rows: list[dict[str, Any]]
    knee: Knee | None
    plots: list[PlotFile] = field(default_factory=list)


def _parse_time(value: Any) -> pd.Timestamp | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = pd.Timestamp(value)
    except ValueError:
        return None
    return t.tz_localize("UTC") if t.tzinfo is None else t


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in df.to_dict(orient="records")]


def _href(target: Path, out_dir: Path) -> str:
    return quote(Path(os.path.relpath(target, out_dir)).as_posix())


def _backend_text(info: dict[str, Any]) -> str:
    backend = info.get("backend")
    if isinstance(backend, dict):
        name = str(backend.get("name") or "?")
        opts = backend.get("options") or {}
        parts = [f"{k}={v}" for k, v in opts.items()] if isinstance(opts, dict) else [str(opts)]
        if backend.get("accel"):
            parts.append(f"accel={backend['accel']}")
        return f"{name} ({', '.join(parts)})" if parts else name
    return str(backend) if backend else "unknown"


def _environment_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """run.json flattened into (what, value) lines; unknown keys are shown too, as JSON."""
    rows: list[tuple[str, str]] = []
    shown = {"run_id", "started_utc", "ended_utc", "report_tz", "outcome", "guests"}

    def add(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            rows.append((label, value if isinstance(value, str) else json.dumps(value)))

    cmd = info.get("command_line")
    add("command line", shlex.join(map(str, cmd)) if isinstance(cmd, list) else cmd)
    add("backend", _backend_text(info) if info.get("backend") else None)
    machine = info.get("machine")
    if isinstance(machine, dict):
        for key, value in machine.items():
            if key == "memory_bytes" and isinstance(value, int | float):
                value = f"{value / 2**30:.1f} GiB"
            add(f"machine {key}", value)
    for key in ("kernel", "python", "git_commit"):
        add(key.replace("_", " "), info.get(key))
    image = info.get("image")
    if isinstance(image, dict):
        for key, value in image.items():
            add(f"image {key}", value)
    packages = info.get("packages")
    if isinstance(packages, dict):
        add("packages", ", ".join(f"{k} {v}" for k, v in sorted(packages.items())))
    offsets = info.get("clock_offsets")
    if isinstance(offsets, dict):
        add(
            "clock offsets",
            ", ".join(f"{h}: {float(v) * 1000:+.2f} ms" for h, v in sorted(offsets.items())
                      if isinstance(v, int | float)),
        )  # fmt: skip
    shown |= {"command_line", "backend", "machine", "kernel", "python", "git_commit", "image",
              "packages", "clock_offsets"}  # fmt: skip
    for key in sorted(set(info) - shown):
        add(key, info[key])
    return rows


def _summary(data: RunData, zone: dt.tzinfo, knee_list: list[Knee]) -> list[tuple[str, str]]:
    """The headline facts: what ran, where, for how long, and how well."""
    t, info = data.timings, data.info
    started = _parse_time(info.get("started_utc")) or t["start"].min()
    ended = _parse_time(info.get("ended_utc")) or t["end"].max()
    env = environment(zone)
    when = env.filters["when"]
    guests = info.get("guests")
    ns = (
        [int(n) for n in guests if isinstance(n, int)]
        if isinstance(guests, list)
        else sorted(int(n) for n in t["n_guests"].unique() if n)
    ) or sorted(int(n) for n in t["n_guests"].unique() if n)
    wl = workload_rows(t)
    rate = success_rate(t)
    rows = [
        ("run", data.run_id),
        ("started", when(started)),
        ("ended", when(ended)),
        ("duration", env.filters["duration"]((ended - started).total_seconds())),
        ("N (guests)", ", ".join(map(str, ns)) or "unknown"),
        ("backend", _backend_text(info)),
        ("guests seen", f"{t.loc[t['guest'] != '', 'guest'].nunique():,}"),
        (
            "workload operations",
            f"{len(wl):,} ({int((~wl['ok']).sum()):,} failed)" if len(wl) else "none",
        ),
        ("success rate", env.filters["pct"](rate, 2) if rate is not None else "no workload"),
        ("guests lost", f"{int((t['phase'] == 'lost').sum()):,}"),
        ("faults injected", f"{int((t['phase'] == 'fault').sum()):,}"),
    ]
    outcome = info.get("outcome")
    if isinstance(outcome, dict) and outcome:
        rows.append(("tests", ", ".join(f"{v} {k}" for k, v in outcome.items())))
    for knee in knee_list:
        rows.append((f"scaling knee: {knee.title}", knee.text))
    return rows


def _raw_files(run_dir: Path, out_dir: Path) -> list[dict[str, Any]]:
    files = []
    for name, what in RAW_FILES:
        path = run_dir / name
        if path.exists():
            files.append(
                {"name": name, "what": what, "href": _href(path, out_dir),
                 "size": path.stat().st_size}
            )  # fmt: skip
    return files


def _scenario_sections(
    data: RunData,
    stats: pd.DataFrame,
    knee_list: list[Knee],
    zone: dt.tzinfo,
    out_dir: Path,
    faults: pd.DataFrame,
    lost: pd.DataFrame,
) -> list[ScenarioSection]:
    wl = workload_rows(data.timings)
    knee_of = {k.title: k for k in knee_list}
    sections = []
    for (base, op), g in stats.groupby(["base", "op"], sort=True, observed=True):
        title = str(g["title"].iloc[0])
        name = slug(title)
        rows = wl[(wl["base"] == base) & (wl["op"] == op)]
        knee = knee_of.get(title)
        section = ScenarioSection(title, f"s-{name}", str(op), _records(g), knee)
        figures = (
            (f"{name}-scaling", "latency, throughput and efficiency vs N",
             plots.scaling_figure(g, knee, title),
             "Latency of successful operations; throughput is successful operations per second "
             "of the scenario's wall time; the dashed line is linear scaling from the smallest N."),
            (f"{name}-distribution", "per-guest distribution and latency CDF",
             plots.distribution_figure(rows, title),
             "Left: each guest's median latency, one box per N (outliers are slow guests). "
             "Right: the share of operations completed within a given latency."),
            (f"{name}-timeline", "latency over time",
             plots.latency_over_time(rows, zone, faults, lost, title),
             "Each point is one operation at the time it began; shaded bands are fault windows, "
             "dashed lines lost guests."),
        )  # fmt: skip
        for fname, ftitle, fig, caption in figures:
            section.plots.append(save_figure(fig, out_dir, fname, ftitle, caption))
        sections.append(section)
    return sections


def _bringup_plots(
    timings: pd.DataFrame,
    zone: dt.tzinfo,
    out_dir: Path,
    faults: pd.DataFrame,
    lost: pd.DataFrame,
) -> tuple[list[PlotFile], int]:
    bu = timings[timings["phase"] == "bringup"]
    groups = sorted(
        bu.groupby(["scenario", "n_guests"], sort=False, observed=True),
        key=lambda kv: cast(int, kv[0][1]),
    )
    skipped = max(0, len(groups) - MAX_GANTTS)
    out = []
    for (scenario, n), g in groups[skipped:]:
        base = base_scenario(str(scenario))
        label = f"{base}, N={n}" if base else f"N={n}"
        fig = plots.bringup_gantt(g, zone, faults, lost, f"bring-up timeline, {label}")
        out.append(
            save_figure(fig, out_dir, slug(f"bringup-{base}-n{n}"), f"bring-up, {label}",
                        "One row per guest, one colour per step from creation to the first "
                        "command answered over SSH.")
        )  # fmt: skip
    return out, skipped


def _drop_stale_plots(out_dir: Path, written: list[PlotFile]) -> None:
    """Remove plot files of an earlier rendering that this one did not write again."""
    keep = {Path(p.png_href).name for p in written} | {Path(p.svg_href).name for p in written}
    for path in (out_dir / PLOTS_DIR).glob("*"):
        if path.suffix in {".png", ".svg"} and path.name not in keep:
            path.unlink(missing_ok=True)


def render_report(run_dir: Path, tz: str | None = None, out_dir: Path | None = None) -> Path:
    """Render ``run_dir`` into ``out_dir`` (default: the run directory); return index.html.

    ``tz`` names the zone every time is shown in; without it the zone recorded in run.json is
    used, else ``$TZ``, else the host's. Missing Parquet files of an interrupted run are rebuilt
    from its streams when the report goes into the run directory itself.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    in_place = out.resolve() == run_dir.resolve()
    data = load_run(run_dir, rebuild_parquet=in_place)
    if not in_place and not (run_dir / TIMINGS_PARQUET).exists():
        data.warnings.append("the run did not end cleanly: read from its append-only streams")
    zone = zone_for_run(tz, data.info, data.warnings)
    out.mkdir(parents=True, exist_ok=True)

    t = data.timings
    faults, lost = fault_rows(t), lost_guests(t)
    stats = series_stats(t)
    knee_list = knees(stats)
    sections = _scenario_sections(data, stats, knee_list, zone, out, faults, lost)
    gantts, gantts_skipped = _bringup_plots(t, zone, out, faults, lost)
    metrics_plot = None
    if not data.metrics.empty:
        metrics_plot = save_figure(
            plots.metrics_figure(data.metrics, zone, faults, lost), out, "metrics",
            "agent metrics over time", "Shaded bands are fault windows; dashed lines lost guests.",
        )  # fmt: skip
    written = [p for s in sections for p in s.plots] + gantts
    written += [metrics_plot] if metrics_plot else []
    _drop_stale_plots(out, written)

    span = offsets_in_span(zone, t["start"].min(), t["end"].max())
    return write_page(
        environment(zone),
        "report.html.j2",
        out / INDEX,
        run_id=data.run_id,
        zone=zone_name(zone),
        zone_offsets=" → ".join(span),
        generated=dt.datetime.now(dt.UTC),
        warnings=data.warnings,
        summary=_summary(data, zone, knee_list),
        knees=knee_list,
        sections=sections,
        bringup=_records(bringup_stats(t)),
        gantts=gantts,
        gantts_skipped=gantts_skipped,
        failures=failures(t),
        lost=_records(lost),
        faults=_records(faults),
        metrics_plot=metrics_plot,
        metric_names=sorted(data.metrics["metric"].unique()) if not data.metrics.empty else [],
        environment=_environment_rows(data.info),
        files=_raw_files(run_dir, out),
    )
