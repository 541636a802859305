"""Golden checks of results: aggregation per N, headline choice, the knee and its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report.synthsweep import SweepSpec, make_sweep

from harness.report import render_report
from harness.report.headline import Headline, declared_headlines, headlines
from harness.report.results import choose_agg, guest_values, metric_results
from harness.report.rundata import RunData, load_run
from harness.report.summary import series_stats

T0 = pd.Timestamp("2026-11-25T19:45:00", tz="UTC")


def _metrics(rows: list[tuple[str, int, str, float, str, str]]) -> pd.DataFrame:
    """(scenario base, N, guest, value, unit, agg) rows, one second apart."""
    return pd.DataFrame([
        {"scenario": f"{base}[n={n}]", "n_guests": n, "guest": guest, "metric": "m",
         "value": value, "unit": unit, "agg": agg, "t": T0 + pd.Timedelta(seconds=i)}
        for i, (base, n, guest, value, unit, agg) in enumerate(rows)])


@pytest.mark.parametrize(("unit", "stated", "agg"), [
    ("req/s", "", "sum"), ("B/s", "", "sum"), ("req", "", "sum"), ("B", "", "sum"),
    ("s", "", "p50"), ("ms", "", "p50"), ("%", "", "mean"), ("", "", "mean"),
    ("req/s", "mean", "mean"), ("s", "max", "max"), ("s", "p99", "p99"), ("%", "median", "p50"),
    ("req/s", "bogus", "sum"),
])
def test_aggregation_is_chosen_by_agg_field_else_unit(unit: str, stated: str, agg: str) -> None:
    assert choose_agg(unit, stated) == agg


def test_summed_rate_per_n_is_the_sum_of_the_guests_values() -> None:
    rng = np.random.default_rng(7)
    rows = []
    expected = {}
    for n in (2, 4, 8):
        means = []
        for g in range(n):
            samples = rng.uniform(50, 150, 3)  # three samples: a guest's value is their mean
            rows += [("test_x", n, f"g{g}", float(v), "req/s", "") for v in samples]
            means.append(samples.mean())
        expected[n] = sum(means)
    res = metric_results(_metrics(rows)).set_index("n_guests")
    assert res["agg"].unique().tolist() == ["sum"]
    for n, total in expected.items():
        assert res.loc[n, "value"] == pytest.approx(total, rel=1e-12)
        assert res.loc[n, "guests"] == n
    per = guest_values(_metrics(rows))
    assert per.groupby("n_guests")["value"].sum().to_dict() == pytest.approx(expected)
    # Ideal: the smallest N's value per guest times the guests; efficiency against it.
    assert res.loc[8, "ideal"] == pytest.approx(expected[2] / 2 * 8)
    assert res.loc[8, "efficiency"] == pytest.approx(expected[8] / (expected[2] / 2 * 8))


def test_a_count_is_each_guests_last_total_summed() -> None:
    rows = [("test_x", 2, "g0", 5.0, "req", ""), ("test_x", 2, "g0", 9.0, "req", ""),
            ("test_x", 2, "g1", 4.0, "req", "")]
    (row,) = metric_results(_metrics(rows)).to_dict(orient="records")
    assert row["value"] == 13.0 and np.isnan(row["efficiency"])  # not a rate: no ideal


def test_latency_percentiles_on_a_fixed_data_set() -> None:
    # Ten guests, one latency each: 1, 2, … 10 ms. Linear interpolation between order stats.
    rows = [("test_x", 10, f"g{i}", (i + 1) / 1000, "s", "") for i in range(10)]
    (row,) = metric_results(_metrics(rows)).to_dict(orient="records")
    assert row["agg"] == "p50"
    assert (row["value"], row["p50"]) == (pytest.approx(0.0055), pytest.approx(0.0055))
    assert row["p95"] == pytest.approx(0.00955) and row["p99"] == pytest.approx(0.00991)
    assert (row["lo"], row["hi"]) == (pytest.approx(0.001), pytest.approx(0.010))
    # A line's agg field asks for another percentile; every sample of every guest counts.
    rows = [("test_y", 2, f"g{i % 2}", float(v), "ms", "p90") for i, v in enumerate(range(1, 11))]
    (row,) = metric_results(_metrics(rows)).to_dict(orient="records")
    assert row["agg"] == "p90" and row["value"] == pytest.approx(9.1)
    assert row["samples"] == 10 and row["guests"] == 2


def test_declared_headline_is_chosen_else_the_harness_operation(tmp_path: Path) -> None:
    declared = load_run(make_sweep(tmp_path / "a"), rebuild_parquet=False)
    assert declared_headlines(declared.info) == {"test_load": "requests_per_s"}
    (h,) = _headlines(declared)
    assert (h.metric, h.declared, h.how) == ("requests_per_s", True, "sum over guests")
    assert h.points == ((1, 100.0), (2, 200.0), (4, 400.0), (8, 800.0), (16, 800.0))

    plain = load_run(make_sweep(tmp_path / "b", SweepSpec(headline=None)), rebuild_parquet=False)
    (h,) = _headlines(plain)
    assert (h.metric, h.declared, h.how) == ("load throughput", False, "harness operation")

    missing = load_run(make_sweep(tmp_path / "c", SweepSpec(headline="nope")),
                       rebuild_parquet=False)
    (h,) = _headlines(missing)
    assert not h.declared and "'nope' was not reported by any agent" in h.note


def _headlines(data: RunData) -> list[Headline]:
    return headlines(data.info, metric_results(data.metrics), series_stats(data.timings),
                     data.timings, data.samples)


def test_knee_at_the_saturating_n_names_the_host_cpu(tmp_path: Path) -> None:
    (h,) = _headlines(load_run(make_sweep(tmp_path / "r"), rebuild_parquet=False))
    assert h.knee == 8
    assert "beyond N=8" in h.text
    assert h.reason == "ran out: host CPU (100% of all cores on average at N=8)"


def test_knee_without_an_exhausted_resource_says_so(tmp_path: Path) -> None:
    run = make_sweep(tmp_path / "r", SweepSpec(cpu_bound=False))
    (h,) = _headlines(load_run(run, rebuild_parquet=False))
    assert h.knee == 8 and h.reason.startswith("no watched resource ran out")
    bare = make_sweep(tmp_path / "bare", SweepSpec(samples=False))
    (h,) = _headlines(load_run(bare, rebuild_parquet=False))
    assert h.knee == 8 and h.reason.startswith("no resource samples in this run")


def test_report_lists_headline_per_n_and_its_knee(tmp_path: Path) -> None:
    html = render_report(make_sweep(tmp_path / "r")).read_text()
    summary = html.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    for cell in ("N=1", "N=16", "100 req/s", "800 req/s", "requests_per_s", "sum over guests",
                 "beyond N=8; ran out: host CPU (100% of all cores on average at N=8)"):
        assert cell in summary, cell
    results = html.split('<section id="results">', 1)[1].split('<section id="scenarios">')[0]
    assert 'id="plot-result-test_load-requests_per_s"' in results
    assert 'id="plot-result-test_load-request_p50"' in results
    # The operations of each N start together: drawn as segments from start to end.
    assert "operations from start to end" in html


def test_an_agent_lines_agg_field_reaches_the_results(tmp_path: Path) -> None:
    from harness.store import Context, Store
    from harness.workloads import parse_agent_output

    parsed = parse_agent_output('{"metric": "lat", "value": 0.25, "unit": "s", "agg": "max"}\n'
                                '{"metric": "lat", "value": 0.5, "unit": "s"}\nplain log\n')
    assert [m["agg"] for m in parsed.metrics] == ["max", ""] and parsed.log == ["plain log"]
    store = Store(tmp_path, Context(run_id="r", scenario="test_x[n=2]", n_guests=2))
    rec = store.scoped()
    for guest, m in zip(("g0", "g1"), parsed.metrics, strict=True):
        rec.metric(m["metric"], m["value"], unit=m["unit"], guest=guest, agg=m["agg"])
    store.finish()
    (row,) = metric_results(load_run_metrics(tmp_path)).to_dict(orient="records")
    assert (row["agg"], row["value"]) == ("max", 0.5)  # the first stated agg wins


def load_run_metrics(run_dir: Path) -> pd.DataFrame:
    from harness.report.rundata import tidy_metrics
    from harness.store import load_metrics

    return tidy_metrics(load_metrics(run_dir))
