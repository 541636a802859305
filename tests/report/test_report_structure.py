"""Golden checks of the rendered report: sections, tables, embedded images, links, rebuilds."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from report.expected import plots_called_for
from report.synthruns import RUN_ID, RunSpec

from harness.errors import UserError
from harness.report import base_scenario, render_report
from harness.store import TIMINGS_STREAM, Context, Store

SECTIONS = (
    "summary",
    "results",
    "scenarios",
    "bringup",
    "failures",
    "lost",
    "faults",
    "metrics",
    "environment",
    "files",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Table:
    section: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


class ReportParser(HTMLParser):
    """Collects section ids, img sources, links and tables (with their enclosing section)."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.figures: dict[str, str] = {}  # figure id → the src of its img
        self._figure: str | None = None
        self.links: list[str] = []
        self.tables: list[Table] = []
        self._section_stack: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section_stack.append(a.get("id") or "")
            self.sections.append(a.get("id") or "")
        elif tag == "figure":
            self._figure = a.get("id") or ""
        elif tag == "img":
            self.images.append(a.get("src") or "")
            if self._figure is not None:
                self.figures[self._figure] = a.get("src") or ""
        elif tag == "a":
            self.links.append(a.get("href") or "")
        elif tag == "table":
            self.tables.append(Table(self._section_stack[0] if self._section_stack else ""))
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section_stack.pop()
        elif tag == "figure":
            self._figure = None
        elif tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if self._in_head:
                table.headers = self._row
            else:
                table.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(index: Path) -> tuple[str, ReportParser]:
    html = index.read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(html)
    return html, parser


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def tables_in(parser: ReportParser, section: str) -> list[Table]:
    return [t for t in parser.tables if t.section == section]


def column(table: Table, header: str) -> list[str]:
    """A column's cells by its header (not its position: columns get added)."""
    assert header in table.headers, (header, table.headers)
    i = table.headers.index(header)
    return [row[i] for row in table.rows]


def plot_names(parser: ReportParser) -> set[str]:
    """The plots the page shows, by name (``<figure id="plot-NAME">``)."""
    assert all(f.startswith("plot-") for f in parser.figures), parser.figures
    return {f.removeprefix("plot-") for f in parser.figures}


def test_sections_present(rendered: Path) -> None:
    _, p = parse(rendered)
    for section in SECTIONS:
        assert section in p.sections
    assert rendered.name == "index.html"


def test_images_are_embedded_valid_pngs(rendered: Path) -> None:
    _, p = parse(rendered)
    wanted = plots_called_for(rendered.parent)
    # The synthetic run calls for every kind of plot, so every kind is checked here.
    for kind in ("-scaling", "-distribution", "-timeline"):
        assert any(n.endswith(kind) for n in wanted), (kind, wanted)
    assert any(n.startswith("gantt-") for n in wanted) and "metrics" in wanted
    # One figure per plot the data calls for: none missing, none extra, none twice.
    assert plot_names(p) == wanted
    assert len(p.images) == len(p.figures)
    for name in wanted:
        src = p.figures[f"plot-{name}"]
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        width, height = png_size(data)
        assert width > 300 and height > 200
        assert data == (rendered.parent / "plots" / f"{name}.png").read_bytes()


def test_nothing_is_fetched_from_a_network(rendered: Path) -> None:
    html, _ = parse(rendered)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "url(" not in html and "<script" not in html and "@import" not in html
    assert "default-src 'none'" in html  # the CSP forbids fetching anything at all


def test_every_link_exists_on_disk(rendered: Path) -> None:
    _, p = parse(rendered)
    files = [h for h in p.links if not h.startswith("#")]
    assert {"timings.parquet", "metrics.parquet", "run.json"} <= set(files)
    svgs = {h for h in files if h.endswith(".svg")}
    assert svgs == {f"plots/{n}.svg" for n in plots_called_for(rendered.parent)}
    for href in files:
        assert (rendered.parent / href).is_file(), href
    anchors = {h[1:] for h in p.links if h.startswith("#")}
    assert anchors <= set(p.sections)


def test_scenario_table_has_one_row_per_n(rendered: Path) -> None:
    _, p = parse(rendered)
    (stats,) = tables_in(p, "scenarios")
    assert stats.headers[:5] == ["N", "ops", "failed", "success", "p50"]
    spec = RunSpec()
    assert [row[0] for row in stats.rows] == [str(n) for n in spec.ns]
    # Every op the run recorded is counted: N guests × the ops each one ran.
    assert [row[1] for row in stats.rows] == [str(n * spec.ops_per_guest) for n in spec.ns]
    for row in stats.rows:
        assert row[4].endswith("ms")  # p50 of ~10–30 ms roundtrips


def test_bringup_lost_faults_failures(rendered: Path) -> None:
    html, p = parse(rendered)
    (bringup,) = tables_in(p, "bringup")
    assert column(bringup, "N") == [str(n) for n in RunSpec().ns]
    (lost,) = tables_in(p, "lost")
    assert len(lost.rows) == 1 and lost.rows[0][0] == "g001"
    assert "(UTC−06:00)" in lost.rows[0][3]  # the loss time in the report zone
    (faults,) = tables_in(p, "faults")
    assert sorted(row[0] for row in faults.rows) == ["kill", "pause"]
    failure_ids = [s for s in p.sections if s.startswith("failure-")]
    assert sorted(failure_ids) == ["failure-lost", "failure-timeout"]
    assert "no answer within 5.0 s" in html


def test_times_are_in_report_zone(rendered: Path) -> None:
    html, p = parse(rendered)
    summary, heads = tables_in(p, "summary")
    facts = {row[0]: row[1] for row in summary.rows}
    # run.json says it started 19:45 UTC and asks for America/El_Salvador.
    assert facts["started"] == "2026-11-25 13:45:00.000 CST (UTC−06:00)"
    assert facts["run"] == RUN_ID
    assert "America/El_Salvador" in html
    # No headline declared: the harness operation's throughput is the headline, at each N.
    assert heads.headers == ["scenario", "headline", "N=2", "N=4", "N=8", "scaling"]
    (row,) = heads.rows
    assert row[0] == "test_ssh_roundtrip" and "(harness operation)" in row[1]


def test_environment_from_run_json(rendered: Path) -> None:
    _, p = parse(rendered)
    (env,) = tables_in(p, "environment")
    facts = {row[0]: row[1] for row in env.rows}
    assert facts["command line"] == "pytest scenarios/ --guests=2,4,8"
    assert facts["kernel"] == "6.18.44"
    assert facts["machine memory_bytes"] == "23.3 GiB"
    assert "paramiko 5.1.0" in facts["packages"]


def test_svg_and_png_files_written(rendered: Path) -> None:
    plots = rendered.parent / "plots"
    svgs, pngs = sorted(plots.glob("*.svg")), sorted(plots.glob("*.png"))
    wanted = plots_called_for(rendered.parent)
    assert {p.stem for p in svgs} == {p.stem for p in pngs} == wanted
    for svg in svgs:
        assert svg.read_text().lstrip().startswith("<?xml")


def test_rerender_in_another_zone(synth_run: Callable[..., Path], tmp_path: Path) -> None:
    run_dir = synth_run(tmp_path / RUN_ID)
    html, p = parse(render_report(run_dir, tz="Europe/Paris"))
    summary = tables_in(p, "summary")[0]
    started = {r[0]: r[1] for r in summary.rows}["started"]
    assert started == "2026-11-25 20:45:00.000 CET (UTC+01:00)"
    assert "Europe/Paris" in html and "America/El_Salvador" not in html.split("<section")[0]


def test_rebuild_from_streams_only(synth_run: Callable[..., Path], tmp_path: Path) -> None:
    """An interrupted run (no Parquet, torn last line) renders and gets its Parquet files."""
    run_dir = synth_run(tmp_path / RUN_ID, RunSpec(finish=False))
    assert not (run_dir / "timings.parquet").exists()
    with (run_dir / TIMINGS_STREAM).open("a") as f:
        f.write('{"run_id": "x", "phase": "workl')  # the writer died mid-line
    index = render_report(run_dir)
    assert (run_dir / "timings.parquet").is_file() and (run_dir / "metrics.parquet").is_file()
    html, p = parse(index)
    assert "rebuilt timings.parquet, metrics.parquet" in html
    (stats,) = tables_in(p, "scenarios")
    spec = RunSpec()
    assert [row[1] for row in stats.rows] == [str(n * spec.ops_per_guest) for n in spec.ns]
    assert pd.read_parquet(run_dir / "timings.parquet")["phase"].notna().all()


def test_out_dir_elsewhere_reads_streams_without_writing(
    synth_run: Callable[..., Path], tmp_path: Path
) -> None:
    run_dir = synth_run(tmp_path / RUN_ID, RunSpec(finish=False))
    out = tmp_path / "elsewhere" / "report"
    index = render_report(run_dir, out_dir=out)
    assert index == out / "index.html"
    assert not (run_dir / "timings.parquet").exists()  # the run directory is left alone
    html, p = parse(index)
    assert "read from its append-only streams" in html
    files = [h for h in p.links if not h.startswith("#") and not h.startswith("plots/")]
    assert "../../" + RUN_ID + "/timings.jsonl" in files
    for href in files:
        assert (out / href).is_file(), href


def test_missing_run_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as err:
        render_report(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_run_dir_without_timings_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no timings"):
        render_report(tmp_path)
    (tmp_path / TIMINGS_STREAM).write_text("")
    with pytest.raises(UserError, match="no timing rows") as err:
        render_report(tmp_path)
    assert "\n" not in str(err.value)


def test_missing_run_json_is_tolerated(synth_run: Callable[..., Path], tmp_path: Path) -> None:
    run_dir = synth_run(tmp_path / RUN_ID, RunSpec(ns=(2,), faults=False, metrics=False))
    (run_dir / "run.json").unlink()
    html, p = parse(render_report(run_dir, tz="UTC"))
    assert "run.json is missing" in html
    # One N: no scaling curve to draw; distribution, timeline and the bring-up remain.
    wanted = plots_called_for(run_dir)
    assert plot_names(p) == wanted and len(p.images) == len(wanted)
    assert not [n for n in wanted if n.endswith("-scaling")]
    # A single N says what the numbers are for and how to get a curve.
    assert "One N only (N=2): every number below is for that N; sweep N" in html
    assert "N=2 only:" in html
    summary, _heads = tables_in(p, "summary")
    assert {r[0]: r[1] for r in summary.rows}["run"] == RUN_ID


@pytest.mark.parametrize(
    ("node", "base"),
    [
        ("test_ssh_roundtrip[n=16]", "test_ssh_roundtrip"),
        ("test_rt[cpu-n=16]", "test_rt[cpu]"),
        ("test_rt[n=16-cpu]", "test_rt[cpu]"),
        ("scenarios/test_x.py::test_rt[n=8]", "scenarios/test_x.py::test_rt"),
        ("test_rt", "test_rt"),
        ("test_rt[nn=3]", "test_rt[nn=3]"),
    ],
)
def test_base_scenario(node: str, base: str) -> None:
    assert base_scenario(node) == base


def test_bringup_only_run_with_failures(tmp_path: Path) -> None:
    """A run whose bring-up failed: no workload at all, failures and a Gantt still shown."""
    store = Store(tmp_path, Context(run_id="r-bringup"))
    rec = store.scoped(scenario="test_rt[n=3]", n_guests=3)
    t = 1_780_000_000 * 10**9
    for i in range(3):
        s = t + i * 10**7
        rec.timing("created", s, s + 10**7, guest=f"g{i}", phase="bringup")
        ok = i != 2
        rec.timing(
            "banner",
            s + 10**7,
            s + 5 * 10**7,
            guest=f"g{i}",
            phase="bringup",
            ok=ok,
            error_class=None if ok else "banner",
            error=None if ok else "Error reading SSH protocol banner",
        )
    store.finish()
    html, p = parse(render_report(tmp_path, tz="Asia/Tokyo"))
    assert "The run recorded no workload operations." in html
    assert "failure-banner" in p.sections
    assert "Error reading SSH protocol banner" in html
    (bringup,) = tables_in(p, "bringup")
    assert column(bringup, "failed") == ["1"]  # one guest failed to come up
    # No workload: the bring-up timeline is the only plot the data calls for.
    assert plot_names(p) == plots_called_for(tmp_path) == {"gantt-test_rt-n3"}
    assert len(p.images) == 1
    summary = tables_in(p, "summary")[0]
    assert {r[0]: r[1] for r in summary.rows}["success rate"] == "no workload"
