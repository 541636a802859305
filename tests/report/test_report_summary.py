"""The numbers: percentiles, throughput, efficiency and the scaling knee on hand-made rows."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.report.plots import time_series_metrics
from harness.report.rundata import tidy_timings
from harness.report.summary import (
    bringup_stats,
    failures,
    find_knee,
    knees,
    metric_table,
    series_stats,
)
from harness.report.templating import fmt_metric

T0 = pd.Timestamp("2026-11-25T19:45:00", tz="UTC")


def _rows(
    n: int, ops: int, latency: float, *, scenario: str = "test_rt", failed: int = 0
) -> list[dict[str, object]]:
    """``n`` guests doing ``ops`` back-to-back ops of ``latency`` s (``failed`` of them fail)."""
    out: list[dict[str, object]] = []
    for g in range(n):
        for k in range(ops):
            start = T0 + pd.Timedelta(seconds=k * latency)
            bad = g == 0 and k < failed
            out.append(
                {
                    "run_id": "r",
                    "scenario": f"{scenario}[n={n}]",
                    "n_guests": n,
                    "guest": f"g{g}",
                    "phase": "workload",
                    "op": "roundtrip",
                    "start": start,
                    "end": start + pd.Timedelta(seconds=latency),
                    "duration_s": latency,
                    "ok": not bad,
                    "error_class": "timeout" if bad else None,
                    "error": f"g{g}: timed out" if bad else None,
                }
            )
    return out


def _frame(*parts: list[dict[str, object]]) -> pd.DataFrame:
    return tidy_timings(pd.DataFrame([r for p in parts for r in p]))


def test_series_stats_throughput_and_efficiency() -> None:
    # N=1: 10 ops in 1 s → 10 ops/s. N=4: 40 ops in 2 s → 20 ops/s; ideal 40, efficiency 0.5.
    stats = series_stats(_frame(_rows(1, 10, 0.1), _rows(4, 10, 0.2)))
    assert list(stats["n_guests"]) == [1, 4]
    assert list(stats["base"]) == ["test_rt", "test_rt"]
    assert stats["throughput"].tolist() == pytest.approx([10.0, 20.0])
    assert stats["ideal"].tolist() == pytest.approx([10.0, 40.0])
    assert stats["efficiency"].tolist() == pytest.approx([1.0, 0.5])
    assert stats["p50"].tolist() == pytest.approx([0.1, 0.2])
    assert stats["count"].tolist() == [10, 40]


def test_latency_percentiles_ignore_failed_ops() -> None:
    stats = series_stats(_frame(_rows(2, 10, 0.1, failed=3)))
    row = stats.iloc[0]
    assert (row["count"], row["ok"], row["failed"]) == (20, 17, 3)
    assert row["success_rate"] == pytest.approx(0.85)
    assert row["throughput"] == pytest.approx(17.0)


def test_knee_is_where_growth_per_doubling_drops_below_ten_percent() -> None:
    assert find_knee([1, 2, 4, 8], [100, 190, 200, 205]) == 2  # 2 → 4 grows only 5 %
    assert find_knee([1, 2, 4, 8], [100, 200, 400, 800]) is None
    # 4 → 16 is two doublings: +21 % in all is +10 % per doubling, no more.
    assert find_knee([4, 16], [100, 121]) == 4
    assert find_knee([4, 16], [100, 125]) is None
    assert find_knee([8, 2, 4], [300, 100, 200]) is None  # order of the input does not matter


def test_knees_explain_themselves() -> None:
    stats = series_stats(_frame(_rows(1, 10, 0.1), _rows(2, 10, 0.1), _rows(4, 10, 0.4)))
    (knee,) = knees(stats)
    assert knee.n == 2 and "beyond N=2" in knee.text
    (single,) = knees(series_stats(_frame(_rows(2, 10, 0.1))))
    assert single.n is None and single.single_n
    assert single.text.startswith("N=2 only: 20.0 ops/s") and "--guests=" in single.text


def test_failures_grouped_by_class_with_guests() -> None:
    (group,) = failures(_frame(_rows(2, 10, 0.1, failed=4)))
    assert (group.error_class, group.count, group.guests) == ("timeout", 4, 1)
    assert group.per_guest[0].guest == "g0" and group.per_guest[0].count == 4
    assert group.examples == ["g0: timed out"]
    assert group.where == "workload/roundtrip ×4"


def test_bringup_stats_time_to_ready() -> None:
    rows = []
    for g in range(3):
        t = T0 + pd.Timedelta(seconds=g)
        for op, d in (("created", 0.1), ("started", 0.4), ("first_command", 0.5)):
            rows.append(
                {
                    "scenario": "s[n=3]",
                    "n_guests": 3,
                    "guest": f"g{g}",
                    "phase": "bringup",
                    "op": op,
                    "start": t,
                    "end": t + pd.Timedelta(seconds=d),
                    "duration_s": d,
                    "ok": True,
                }
            )
            t += pd.Timedelta(seconds=d)
    (row,) = bringup_stats(tidy_timings(pd.DataFrame(rows))).to_dict(orient="records")
    assert row["guests"] == 3 and row["failed"] == 0
    assert row["ready_p50"] == pytest.approx(1.0)
    assert row["all_ready_s"] == pytest.approx(3.0)
    assert row["slowest_step"].startswith("first_command")


def test_metric_series_and_table() -> None:
    rows = [
        {
            "scenario": "s[n=2]",
            "guest": g,
            "t": T0 + pd.Timedelta(seconds=k),
            "metric": m,
            "value": float(k),
            "unit": u,
        }
        for g in ("g0", "g1")
        for m, u, samples in (("cpu", "%", 5), ("hash_rate", "op/s", 1))
        for k in range(samples)
    ]
    metrics = pd.DataFrame(rows)
    assert time_series_metrics(metrics) == ["cpu"]  # one value per guest is a result, not a series
    table = metric_table(metrics).set_index("metric")
    assert table.loc["cpu", "samples"] == 10 and table.loc["cpu", "guests"] == 2
    assert table.loc["cpu", "max"] == 4.0 and table.loc["hash_rate", "samples"] == 2


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (3.103e8, "B/s", "295.9 MiB/s"),
        (2.414e5, "op/s", "241.4 k op/s"),
        (0.0123, "s", "12.3 ms"),
        (28672, "B", "28.0 KiB"),
        (None, "s", "–"),
    ],
)
def test_metric_values_are_readable(value: float | None, unit: str, text: str) -> None:
    assert fmt_metric(value, unit) == text
