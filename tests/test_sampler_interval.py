"""How the sampler's interval adapts to what a round costs (harness.telemetry.sampler)."""

from __future__ import annotations

import pytest

from harness.telemetry.sampler import CPU_BUDGET, MAX_INTERVAL, WALL_BUDGET, next_interval


@pytest.mark.parametrize(("interval", "cpu", "wall", "after"), [
    (1.0, 0.0194, 0.03, 1.0),   # 256 guests (bench_sampler): 1.9 % of a core, stays
    (1.0, 0.134, 0.15, 2.0),    # 1024 guests: 13 % of a core at 1 s, doubles…
    (2.0, 0.134, 0.15, 4.0),    # …and again…
    (4.0, 0.134, 0.15, 4.0),    # …and settles at 4 s: 3.3 % of a core
    (1.0, 0.004, 0.9, 2.0),     # a dom0 that takes most of the interval to answer
    (1.0, 0.004, 0.4, 1.0),     # a loaded host's slow round that costs little CPU: stays
    (MAX_INTERVAL, 5.0, 29.0, MAX_INTERVAL),
])
def test_interval_doubles_only_past_its_budgets(interval: float, cpu: float, wall: float,
                                                after: float) -> None:
    assert next_interval(interval, cpu, wall) == after


def test_the_budgets_are_a_twentieth_of_a_core_and_half_the_interval() -> None:
    assert next_interval(1.0, CPU_BUDGET, WALL_BUDGET) == 1.0  # at the budget: not past it
    assert next_interval(1.0, CPU_BUDGET + 1e-6, 0.0) == 2.0
    assert next_interval(1.0, 0.0, WALL_BUDGET + 1e-6) == 2.0
