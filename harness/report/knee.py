"""Why a headline stopped growing: which resource ran out while the scenario ran at the knee.

The resource samples (harness.telemetry) of the scenario's time at the knee N, and at the N
after it, are read for what a scalability curve usually hits: the lab host's CPU, its memory,
one guest's CPU (its ``--guest-cpus`` share, else one core: an agent is usually one process),
and the links (the guests' traffic stopped growing while N grew). Nothing there is said as
plainly: then the limit is in the system under test itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from harness.report.resources import (
    SATURATED_CPU,
    SATURATED_PRESSURE,
    guest_rates,
    host_cpu_percent,
    host_gauge,
    host_memory_percent,
)

#: Memory in use at or above this (% of the host's) counts as run out.
SATURATED_MEMORY = 90.0
#: A guest using this share of its CPU (its limit, else one core) ran out of it.
SATURATED_GUEST_CPU = 0.9
#: Traffic below this (bytes/s, all guests) is too little to call the links full.
MIN_LINK_BYTES = 1 << 20
#: Rates are read at the sample after an interval: look this far past a scenario's end.
_TAIL = pd.Timedelta(seconds=1)


def find_rise(ns: Sequence[int], values: Sequence[float], growth: float) -> int | None:
    """The N beyond which a latency grows by more than ``growth`` per doubling of N."""
    pairs = sorted((n, v) for n, v in zip(ns, values, strict=True) if n > 0 and not math.isnan(v))
    for (n0, v0), (n1, v1) in itertools.pairwise(pairs):
        if v0 > 0 and (v1 / v0) ** (1.0 / math.log2(n1 / n0)) - 1.0 > growth + 1e-9:
            return n0
    return None


@dataclass(frozen=True)
class Span:
    """When one scenario ran at one N (its workload rows)."""

    n: int
    start: pd.Timestamp
    end: pd.Timestamp


def scenario_spans(timings: pd.DataFrame, base: str) -> dict[int, Span]:
    wl = timings[(timings["phase"] == "workload") & (timings["base"].astype(str) == base)]
    spans = wl.groupby("n_guests", observed=True).agg(start=("start", "min"), end=("end", "max"))
    return {int(n): Span(int(n), start, end)
            for n, start, end in zip(spans.index, spans["start"], spans["end"], strict=True)}


def _inside(series: pd.Series, span: Span) -> pd.Series:
    # A rate at sample t covers the interval before t: one at the span's start is from before.
    return series[(series.index > span.start) & (series.index <= span.end + _TAIL)]


def _host(samples: pd.DataFrame, span: Span) -> list[str]:
    out = []
    cpu = _inside(host_cpu_percent(samples), span)
    if len(cpu) and cpu.mean() >= SATURATED_CPU:
        out.append(f"host CPU ({cpu.mean():.0f}% of all cores on average at N={span.n})")
    mem = _inside(host_memory_percent(samples), span)
    if len(mem) and mem.max() >= SATURATED_MEMORY:
        out.append(f"host memory ({mem.max():.0f}% in use at N={span.n})")
    pressure = _inside(host_gauge(samples, "pressure_memory_some_avg10"), span)
    if len(pressure) and pressure.max() >= SATURATED_PRESSURE:
        out.append(f"host memory (pressure {pressure.max():.0f}% at N={span.n})")
    return out


def _guest_cpu(samples: pd.DataFrame, span: Span, limit: float | None) -> list[str]:
    cpu = guest_rates(samples, ("cpu_seconds",))
    cpu = cpu[(cpu["t"] > span.start) & (cpu["t"] <= span.end + _TAIL)]
    if cpu.empty:
        return []
    per_guest = cpu.groupby("guest")["rate"].mean()
    busiest, cores = str(per_guest.idxmax()), float(per_guest.max())
    cap = limit or 1.0
    if cores < SATURATED_GUEST_CPU * cap:
        return []
    what = f"its --guest-cpus {cap:g}" if limit else "one core"
    return [f"CPU of guest {busiest} ({cores:.2f} cores of {what} at N={span.n})"]


def _traffic(samples: pd.DataFrame, span: Span) -> float | None:
    net = guest_rates(samples, ("net_tx_bytes", "net_rx_bytes"))
    net = net[(net["t"] > span.start) & (net["t"] <= span.end + _TAIL)]
    if net.empty:
        return None
    return float(net.groupby("t")["rate"].sum().mean())


def _links(samples: pd.DataFrame, span: Span, after: Span | None, growth: float) -> list[str]:
    if after is None:
        return []
    here, there = _traffic(samples, span), _traffic(samples, after)
    if here is None or there is None or here < MIN_LINK_BYTES:
        return []
    allowed = (1 + growth) ** math.log2(after.n / span.n)
    if there > here * allowed:
        return []
    mib = 1 << 20
    return [f"link bytes (the guests' traffic stayed at {here / mib:.1f} MiB/s at N={span.n} "
            f"→ {there / mib:.1f} MiB/s at N={after.n})"]


def what_ran_out(samples: pd.DataFrame, spans: dict[int, Span], knee: int,
                 guest_cpus: float | None, growth: float) -> list[str]:
    """The resources that ran out at the knee N, else at the N after it (first found)."""
    later = sorted(n for n in spans if n > knee)
    after = spans[later[0]] if later else None
    for span in [s for s in (spans.get(knee), after) if s is not None]:
        found = _host(samples, span) + _guest_cpu(samples, span, guest_cpus)
        if found:
            return found
    at_knee = spans.get(knee)
    return _links(samples, at_knee, after, growth) if at_knee is not None else []


def knee_reason(samples: pd.DataFrame, timings: pd.DataFrame, base: str, knee: int,
                guest_cpus: float | None, growth: float) -> str:
    """A sentence naming what ran out at the knee, or saying that nothing watched did."""
    if samples.empty:
        return "no resource samples in this run (--sample-interval 0?): what ran out is unknown"
    spans = scenario_spans(timings, base)
    if knee not in spans:
        return "the scenario has no timed operations to place the samples: unknown"
    found = what_ran_out(samples, spans, knee, guest_cpus, growth)
    if found:
        return "ran out: " + "; ".join(found)
    return ("no watched resource ran out (host CPU and memory, guests' CPU, links): the limit "
            "is in the system under test itself (a lock, a single server, a queue)")
