"""What ran out at a knee, from hand-made samples: a guest's CPU (its limit, else a core),
the host's memory, the links' bytes — and the rise of a latency headline."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.report.knee import Span, find_rise, what_ran_out
from harness.report.resources import tidy_samples

T0 = pd.Timestamp("2026-11-25T19:45:00", tz="UTC")


def _counter(guest: str, resource: str, per_s: float, start: float, seconds: int,
             unit: str = "s", base: float = 0.0) -> list[dict[str, object]]:
    """A counter growing ``per_s`` a second from ``base``, sampled every second from
    ``start``."""
    return [{"guest": guest, "lab": "default", "resource": resource, "item": "", "kind": "counter",
             "unit": unit, "t": T0 + pd.Timedelta(seconds=start + k), "value": base + per_s * k}
            for k in range(seconds + 1)]


def _gauge(resource: str, value: float, start: float, seconds: int) -> list[dict[str, object]]:
    return [{"guest": "", "lab": "", "resource": resource, "item": "", "kind": "gauge",
             "unit": "B", "t": T0 + pd.Timedelta(seconds=start + k), "value": value}
            for k in range(seconds + 1)]


def _spans(*ns: int, seconds: int = 10) -> dict[int, Span]:
    """Each N runs ``seconds`` long, one after the other with 10 s between."""
    return {n: Span(n, T0 + pd.Timedelta(seconds=i * 2 * seconds),
                    T0 + pd.Timedelta(seconds=i * 2 * seconds + seconds))
            for i, n in enumerate(ns)}


def test_a_guest_at_its_cpu_limit_ran_out() -> None:
    samples = tidy_samples(pd.DataFrame(
        _counter("g000", "cpu_seconds", 0.49, 0, 10) + _counter("g001", "cpu_seconds", 0.1, 0, 10)))
    found = what_ran_out(samples, _spans(4), 4, guest_cpus=0.5, growth=0.1)
    assert found == ["CPU of guest g000 (0.49 cores of its --guest-cpus 0.5 at N=4)"]
    # Without a limit half a core is not all a guest has.
    assert what_ran_out(samples, _spans(4), 4, guest_cpus=None, growth=0.1) == []


def test_a_guest_using_a_whole_core_without_a_limit_ran_out() -> None:
    samples = tidy_samples(pd.DataFrame(_counter("srv", "cpu_seconds", 0.98, 0, 10)))
    (found,) = what_ran_out(samples, _spans(8), 8, guest_cpus=None, growth=0.1)
    assert found == "CPU of guest srv (0.98 cores of one core at N=8)"


def test_host_memory_in_use_ran_out() -> None:
    samples = tidy_samples(pd.DataFrame(_gauge("memory_used_bytes", 7.6e9, 0, 10)
                                        + _gauge("memory_total_bytes", 8e9, 0, 10)))
    assert what_ran_out(samples, _spans(8), 8, None, 0.1) == [
        "host memory (95% in use at N=8)"]


def test_links_whose_traffic_stopped_growing_ran_out() -> None:
    mib = float(1 << 20)
    rows = (_counter("g0", "net_tx_bytes", 100 * mib, 0, 10, "B")  # N=8: 100 MiB/s in all
            + _counter("g0", "net_tx_bytes", 52 * mib, 20, 10, "B", 1000 * mib)  # N=16: 104
            + _counter("g1", "net_tx_bytes", 52 * mib, 20, 10, "B"))
    samples = tidy_samples(pd.DataFrame(rows))
    spans = _spans(8, 16)
    (found,) = what_ran_out(samples, spans, 8, None, 0.1)
    assert found.startswith("link bytes (the guests' traffic stayed at 100.0 MiB/s at N=8")
    assert "104.0 MiB/s at N=16" in found
    # Traffic that doubled with N is not a full link.
    grown = tidy_samples(pd.DataFrame(
        _counter("g0", "net_tx_bytes", 100 * mib, 0, 10, "B")
        + _counter("g0", "net_tx_bytes", 100 * mib, 20, 10, "B", 1000 * mib)
        + _counter("g1", "net_tx_bytes", 100 * mib, 20, 10, "B")))
    assert what_ran_out(grown, spans, 8, None, 0.1) == []


@pytest.mark.parametrize(("values", "knee"), [
    ([10, 10.5, 11, 20], 4),  # 4 → 8 nearly doubles
    ([10, 10.5, 11, 11.5], None),
    ([10, 30, 31, 32], 1),
])
def test_a_latency_headline_knees_where_it_rises(values: list[float], knee: int | None) -> None:
    assert find_rise([1, 2, 4, 8], values, 0.1) == knee
