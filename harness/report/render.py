"""``render_report``: one run directory in, one self-contained ``index.html`` (and plots) out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd

from harness.report import plots
from harness.report.export import PLOTS_DIR, PlotFile, save_figure, slug
from harness.report.facts import environment_rows, not_passed, raw_files, run_summary
from harness.report.headline import SWEEP_HINT, Headline, headlines
from harness.report.resources import ScenarioCost, scenario_costs
from harness.report.results import guest_values, metric_results
from harness.report.resultsection import headline_rows, result_sections
from harness.report.rundata import RunData, load_run
from harness.report.scenarios import base_scenario
from harness.report.summary import (
    Knee,
    bringup_rows,
    bringup_stats,
    failures,
    fault_rows,
    knees,
    lost_guests,
    metric_table,
    series_stats,
    workload_rows,
)
from harness.report.templating import environment, write_page
from harness.report.zones import offsets_in_span, zone_for_run, zone_name
from harness.store import TIMINGS_PARQUET

INDEX = "index.html"
MAX_GANTTS = 6  # bring-up timelines drawn at most (each is a tall figure)

CAPTION_SCALING = (
    "Latency of successful operations; throughput is successful operations per second of the "
    "scenario's wall time; the dashed line is linear scaling from the smallest N."
)
CAPTION_DISTRIBUTION = (
    "Left: each guest's median latency, one box per N (outliers are slow guests). "
    "Right: the share of operations completed within a given latency."
)
CAPTION_TIMELINE = (
    "Each point is one operation at the time it began; shaded bands are fault windows, "
    "dashed lines lost guests."
)
CAPTION_SEGMENTS = (
    "The operations of each N began together: one row per guest, a segment from start to end "
    "(where a row ends is when that guest finished); shaded bands are fault windows."
)
CAPTION_GANTT = (
    "One row per guest, one colour per step from creation to the first command answered over SSH."
)
CAPTION_METRICS = "Shaded bands are fault windows; dashed lines lost guests."


@dataclass
class ScenarioSection:
    """What the template shows for one workload series (scenario base, op)."""

    title: str
    anchor: str
    op: str
    rows: list[dict[str, Any]]
    knee: Knee | None
    plots: list[PlotFile] = field(default_factory=list)


@dataclass(frozen=True)
class TimeContext:
    """What every plot over time needs: the zone and the fault/lost rows to draw behind."""

    zone: dt.tzinfo
    faults: pd.DataFrame
    lost: pd.DataFrame


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in df.to_dict(orient="records")]


def _scenario_sections(
    data: RunData, stats: pd.DataFrame, knee_list: list[Knee], tc: TimeContext, out: Path
) -> list[ScenarioSection]:
    """Per workload series: its table rows, and its scaling, distribution and timeline plots."""
    wl = workload_rows(data.timings)
    knee_of = {k.title: k for k in knee_list}
    sections = []
    for (base, op), g in stats.groupby(["base", "op"], sort=True, observed=True):
        title = str(g["title"].iloc[0])
        name = slug(title)
        rows = wl[(wl["base"] == base) & (wl["op"] == op)]
        knee = knee_of.get(title)
        section = ScenarioSection(title, f"s-{name}", str(op), _records(g), knee)
        # Build and save one figure at a time: only one is ever held in memory.
        if len(g) > 1:  # a scaling curve needs at least two N
            section.plots.append(
                save_figure(
                    plots.scaling_figure(g, knee, title),
                    out,
                    f"{name}-scaling",
                    "latency, throughput and efficiency vs N",
                    CAPTION_SCALING,
                )
            )
        section.plots.append(
            save_figure(
                plots.distribution_figure(rows, title),
                out,
                f"{name}-distribution",
                "per-guest distribution and latency CDF",
                CAPTION_DISTRIBUTION,
            )
        )
        section.plots.append(_timeline(rows, tc, title, name, out))
        sections.append(section)
    return sections


def _timeline(rows: pd.DataFrame, tc: TimeContext, title: str, name: str, out: Path) -> PlotFile:
    """Operations that start together as segments (one row per guest), else a dot per op."""
    if plots.starts_together(rows):
        fig = plots.operations_figure(rows, tc.zone, tc.faults, tc.lost, title)
        return save_figure(fig, out, f"{name}-timeline", "operations from start to end",
                           CAPTION_SEGMENTS)
    fig = plots.latency_over_time(rows, tc.zone, tc.faults, tc.lost, title)
    return save_figure(fig, out, f"{name}-timeline", "latency over time", CAPTION_TIMELINE)


def _bringup_plots(timings: pd.DataFrame, tc: TimeContext, out: Path) -> tuple[list[PlotFile], int]:
    """A Gantt chart per bring-up (lab, scenario, N); returns (plots, bring-ups not drawn).

    With more than MAX_GANTTS bring-ups only the largest N of each scenario is drawn: that is
    where contention shows, and the table above has the numbers of the others. A recipe lab
    of the same scenario and N is a bring-up of its own, drawn apart.
    """
    bu = bringup_rows(timings)
    keys = ["lab", "scenario", "n_guests"]
    groups = [
        (base_scenario(str(scenario)), cast(int, n), str(lab), g)
        for (lab, scenario, n), g in bu.groupby(keys, sort=False, observed=True)
    ]
    groups.sort(key=lambda item: (item[0], item[1], item[2]))
    if len(groups) > MAX_GANTTS:
        largest = {base: n for base, n, _, _ in groups}  # sorted by N, so the last one wins
        groups = [item for item in groups if item[1] == largest[item[0]]][:MAX_GANTTS]
    skipped = len(bu.groupby(keys, observed=True)) - len(groups)
    written = []
    for base, n, lab, g in groups:
        # Side labs (a boot storm's side1, side2…) are named by their scenario already.
        lab_label = f"lab {lab}, " if lab and base == "bringup" else ""
        label = f"{lab_label}{base}, N={n}" if base else f"{lab_label}N={n}"
        fig = plots.bringup_gantt(g, tc.zone, tc.faults, tc.lost, f"bring-up timeline, {label}")
        name = slug(f"gantt-{lab if base == 'bringup' else ''}-{base}-n{n}")
        written.append(save_figure(fig, out, name, f"bring-up, {label}", CAPTION_GANTT))
    return written, skipped


def _drop_stale_plots(out: Path, written: list[PlotFile]) -> None:
    """Remove plot files of an earlier rendering that this one did not write again.

    ``compare-*`` files belong to :func:`compare_runs` writing into the same directory.
    """
    keep = {Path(p.png_href).name for p in written} | {Path(p.svg_href).name for p in written}
    for path in (out / PLOTS_DIR).glob("*"):
        stale = path.suffix in {".png", ".svg"} and path.name not in keep
        if stale and not path.name.startswith("compare-"):
            path.unlink(missing_ok=True)


CAPTION_HOST = ("The lab host over the whole run; dotted lines mark where each scenario began, "
                "shaded bands are fault windows.")
CAPTION_GUESTS = ("Per guest, as rates between samples: the line is the median guest, the band "
                  "holds 90% of them, the thin lines are the busiest guests.")


@dataclass
class ResourcesSection:
    plots: list[PlotFile]
    costs: list[ScenarioCost]


def _scenario_spans(timings: pd.DataFrame) -> pd.DataFrame:
    """Where each scenario (test) began and ended, labelled for the time axes."""
    wl = workload_rows(timings)
    if wl.empty:
        return pd.DataFrame(columns=["start", "end", "label"])
    spans = wl.groupby("scenario", observed=True, as_index=False).agg(
        start=("start", "min"), end=("end", "max"))
    spans["label"] = spans["scenario"].astype(str)
    sorted_spans: pd.DataFrame = spans.sort_values("start")
    return sorted_spans


def _resources(data: RunData, tc: TimeContext, out: Path) -> ResourcesSection | None:
    """The Resources section, when the run has samples (runs before telemetry have none)."""
    samples = data.samples
    if samples.empty:
        return None
    spans = _scenario_spans(data.timings)
    written = [save_figure(plots.host_figure(samples, tc.zone, tc.faults, tc.lost, spans),
                           out, "resources-host", "lab host: CPU, memory, load",
                           CAPTION_HOST)]
    guests = plots.guests_figure(samples, tc.zone, tc.faults, tc.lost, spans)
    if guests is not None:
        written.append(save_figure(guests, out, "resources-guests",
                                   "guests: CPU and traffic", CAPTION_GUESTS))
    return ResourcesSection(written, scenario_costs(samples, workload_rows(data.timings)))


def _sample_interval(info: dict[str, Any]) -> str:
    config = info.get("config")
    value = config.get("sample_interval") if isinstance(config, dict) else None
    return f"{value:g} s" if isinstance(value, int | float) else "interval"


LIVE_NOTE = "live: the run is still going; this page is re-rendered every {every} until it ends"


def _load(run_dir: Path, out: Path, live_every: float | None) -> RunData:
    """The run; while it goes on (``live_every``) its streams are the truth and no Parquet
    file is written from them."""
    in_place = out.resolve() == run_dir.resolve()
    data = load_run(run_dir, rebuild_parquet=in_place and live_every is None)
    if live_every is not None:
        data.warnings.insert(0, LIVE_NOTE.format(every=f"{live_every:g} s"))
    if live_every is None and not in_place and not (run_dir / TIMINGS_PARQUET).exists():
        data.warnings.append("the run did not end cleanly: read from its append-only streams")
    return data


def _metrics_plot(data: RunData, series: list[str], tc: TimeContext,
                  out: Path) -> PlotFile | None:
    if not series:
        return None
    fig = plots.metrics_figure(data.metrics, tc.zone, tc.faults, tc.lost, series)
    return save_figure(fig, out, "metrics", "agent metrics over time", CAPTION_METRICS)


def _headline_table(heads: list[Headline]) -> dict[str, Any]:
    ns, rows = headline_rows(heads)
    single = len(ns) == 1
    note = (f"One N only (N={ns[0]}): every number below is for that N; {SWEEP_HINT}."
            if single else "")
    return {"ns": ns, "rows": rows, "note": note}


def render_report(run_dir: Path, tz: str | None = None, out_dir: Path | None = None, *,
                  live_every: float | None = None) -> Path:
    """Render ``run_dir`` into ``out_dir`` (default: the run directory); return index.html.

    ``tz`` names the zone every time is shown in; without it the zone recorded in run.json is
    used, else ``$TZ``, else the host's. Missing Parquet files of an interrupted run are rebuilt
    from its streams when the report goes into the run directory itself.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    data = _load(run_dir, out, live_every)
    zone = zone_for_run(tz, data.info, data.warnings)
    out.mkdir(parents=True, exist_ok=True)

    t = data.timings
    tc = TimeContext(zone, fault_rows(t), lost_guests(t))
    stats = series_stats(t)
    knee_list = knees(stats)
    sections = _scenario_sections(data, stats, knee_list, tc, out)
    results = metric_results(data.metrics)
    heads = headlines(data.info, results, stats, t, data.samples)
    results_sections = result_sections(results, guest_values(data.metrics), heads, out)
    gantts, gantts_skipped = _bringup_plots(t, tc, out)
    series = plots.time_series_metrics(data.metrics)
    metrics_plot = _metrics_plot(data, series, tc, out)
    resources = _resources(data, tc, out)
    written = [p for s in sections for p in s.plots] + gantts
    written += [p for r in results_sections for p in r.plots]
    written += resources.plots if resources else []
    _drop_stale_plots(out, [*written, metrics_plot] if metrics_plot else written)

    return write_page(
        environment(zone),
        "report.html.j2",
        out / INDEX,
        run_id=data.run_id,
        zone=zone_name(zone),
        zone_offsets=" → ".join(offsets_in_span(zone, t["start"].min(), t["end"].max())),
        generated=dt.datetime.now(dt.UTC),
        warnings=data.warnings,
        summary=run_summary(data, zone),
        headlines=_headline_table(heads),
        results=results_sections,
        sections=sections,
        bringup=_records(bringup_stats(t)),
        tests=not_passed(data.info),
        gantts=gantts,
        gantts_skipped=gantts_skipped,
        failures=failures(t),
        lost=_records(tc.lost),
        faults=_records(tc.faults),
        metrics_plot=metrics_plot,
        resources=resources,
        sample_interval=_sample_interval(data.info),
        metric_series=series,
        metric_table=_records(metric_table(data.metrics)),
        environment=environment_rows(data.info),
        files=raw_files(run_dir, out),
    )
