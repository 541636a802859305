"""``scalelab report`` and ``scalelab compare`` as a user types them, on recorded runs.

The runs are synthetic (tests/report/synthruns.py records them through the real Store API),
so these need no root and no lab; what is tested is the command: its arguments, what it
writes where, what it prints and its exit status.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import one_clear_line, scalelab
from report.synthruns import RUN_ID, RunSpec, make_run

from harness.store import TIMINGS_PARQUET


def _started(html: str) -> str:
    """The summary's "started" cell."""
    cell = html.split(">started<", 1)[1].split("<td>", 1)[1]
    return cell.split("</td>", 1)[0].strip()


def _files(d: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``d`` with its size and mtime: to prove a directory was not written."""
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_report_rerenders_a_run_in_its_recorded_zone(tmp_path: Path) -> None:
    run = make_run(tmp_path / RUN_ID)
    assert not (run / "index.html").exists()
    res = scalelab("report", str(run))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"report: {run / 'index.html'}"
    html = (run / "index.html").read_text()
    # run.json asked for America/El_Salvador; the run started at 19:45 UTC.
    assert _started(html) == "2026-11-25 13:45:00.000 CST (UTC−06:00)"
    assert list((run / "plots").glob("*.svg"))


def test_report_tz_draws_in_another_zone(tmp_path: Path) -> None:
    run = make_run(tmp_path / RUN_ID)
    assert scalelab("report", str(run)).returncode == 0
    res = scalelab("report", str(run), "--tz", "Asia/Tokyo")
    assert res.returncode == 0, res.stderr
    html = (run / "index.html").read_text()
    assert _started(html) == "2026-11-26 04:45:00.000 JST (UTC+09:00)"
    assert "Asia/Tokyo" in html and "America/El_Salvador" not in html.split("<section")[0]


def test_report_out_leaves_the_run_directory_alone(tmp_path: Path) -> None:
    """An interrupted run (streams only) rendered elsewhere: nothing is written beside it."""
    run = make_run(tmp_path / RUN_ID, RunSpec(finish=False))
    before = _files(run)
    out = tmp_path / "for-readers" / "paris"
    res = scalelab("report", str(run), "--tz", "Europe/Paris", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"report: {out / 'index.html'}"
    html = (out / "index.html").read_text()
    assert _started(html) == "2026-11-25 20:45:00.000 CET (UTC+01:00)"
    assert "read from its append-only streams" in html
    assert list((out / "plots").glob("*.png"))
    assert _files(run) == before and not (run / TIMINGS_PARQUET).exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["NOWHERE"], ["is not a run directory"]),
        (["RUN", "--tz", "Mars/Olympus"], ["Mars/Olympus"]),
        (["EMPTY"], ["has no timings"]),
    ],
)
def test_report_bad_input_is_one_clear_line(args: list[str], needles: list[str],
                                            tmp_path: Path) -> None:
    run = make_run(tmp_path / RUN_ID)
    (tmp_path / "empty").mkdir()
    where = {"NOWHERE": str(tmp_path / "nowhere"), "RUN": str(run),
             "EMPTY": str(tmp_path / "empty")}
    res = scalelab("report", *[where.get(a, a) for a in args])
    one_clear_line(res, *needles)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same sweep three times: as recorded, every op twice as slow, and 5 % slower."""
    root = tmp_path_factory.mktemp("compare")
    factors = {"base": 1.0, "slower": 2.0, "noise": 1.05}
    return {name: make_run(root / name, RunSpec(run_id=f"run-{name}", latency_factor=f))
            for name, f in factors.items()}


def test_compare_fail_on_regression_exits_1_on_a_regression(
        runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    res = scalelab("compare", str(runs["base"]), str(runs["slower"]), "--out", str(out),
                   "--fail-on-regression")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "WORSE" in res.stdout and "regression(s) beyond 10%" in res.stdout
    assert res.stdout.rstrip().endswith(f"comparison: {out / 'compare.html'}")
    assert (out / "compare.txt").read_text() in res.stdout
    # Without the flag the same finding is reported and the command succeeds.
    plain = scalelab("compare", str(runs["base"]), str(runs["slower"]), "--out", str(out))
    assert plain.returncode == 0 and "WORSE" in plain.stdout


def test_compare_fail_on_regression_exits_0_without_one(
        runs: dict[str, Path], tmp_path: Path) -> None:
    res = scalelab("compare", str(runs["base"]), str(runs["noise"]), "--out",
                   str(tmp_path / "cmp"), "--fail-on-regression")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no regression beyond 10%" in res.stdout
    # 5 % of 800 operations a side is a regression under a 2 % threshold (chance does not
    # explain it): the exit status follows it.
    a, b = (make_run(tmp_path / f"many{f}", RunSpec(run_id=f"run-many-{f}", ns=(8,),
                                                     ops_per_guest=100, latency_factor=f))
            for f in (1.0, 1.05))
    strict = scalelab("compare", str(a), str(b), "--out", str(tmp_path / "cmp2"),
                      "--threshold", "0.02", "--fail-on-regression")
    assert strict.returncode == 1 and "regression(s) beyond 2%" in strict.stdout


def test_compare_writes_into_run_b_by_default(runs: dict[str, Path], tmp_path: Path) -> None:
    b = make_run(tmp_path / "b", RunSpec(run_id="run-b"))
    res = scalelab("compare", str(runs["base"]), str(b))
    assert res.returncode == 0, res.stderr
    assert (b / "compare.html").is_file() and (b / "compare.txt").is_file()


def test_compare_missing_run_is_one_clear_line(runs: dict[str, Path], tmp_path: Path) -> None:
    res = scalelab("compare", str(runs["base"]), str(tmp_path / "missing"),
                   "--fail-on-regression")
    one_clear_line(res, "does not exist")
    assert res.returncode == 2  # bad input, not a regression (1)
    assert not (tmp_path / "missing").exists()  # nothing made for a run that is not there


def test_compare_fail_on_regression_exits_1_on_a_headline_drop(tmp_path: Path) -> None:
    from report.synthsweep import SweepSpec, make_sweep

    a = make_sweep(tmp_path / "a", SweepSpec(run_id="sweep-a"))
    b = make_sweep(tmp_path / "b", SweepSpec(run_id="sweep-b", rate_factor=0.8))
    res = scalelab("compare", str(a), str(b), "--out", str(tmp_path / "cmp"),
                   "--fail-on-regression")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "requests_per_s (headline)" in res.stdout and "(-20.0 %)" in res.stdout
    same = scalelab("compare", str(a), str(a), "--out", str(tmp_path / "cmp2"),
                    "--fail-on-regression")
    assert same.returncode == 0 and "no regression beyond 10%" in same.stdout
