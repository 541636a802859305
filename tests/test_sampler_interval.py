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


@pytest.mark.parametrize(("interval", "cpu", "wall", "after"), [
    (4.0, 0.004, 0.01, 2.0),    # 1024 guests gone, 64 left: back down…
    (2.0, 0.004, 0.01, 1.0),    # …to the interval asked for…
    (1.0, 0.0001, 0.001, 1.0),  # …and never below it
    (4.0, 0.134, 0.15, 4.0),    # 1024 guests still up: 3.3 % of a core, stays
    (4.0, 0.06, 0.1, 4.0),      # over a quarter of the CPU budget at 4 s: stays
    (4.0, 0.004, 0.6, 4.0),     # cheap, but a slow dom0's wait is over a quarter: stays
])
def test_interval_halves_back_when_a_round_is_cheap(interval: float, cpu: float, wall: float,
                                                    after: float) -> None:
    assert next_interval(interval, cpu, wall, asked=1.0) == after


@pytest.mark.parametrize("cpu", [0.004, 0.02, 0.06, 0.134, 0.3, 1.0])
def test_a_steady_cost_settles_without_swinging(cpu: float) -> None:
    """From the interval asked for, a round of steady cost settles where it stays: the
    halving back never undoes a doubling (no interval it leaves is one it returns to)."""
    seen, interval = [1.0], 1.0
    for _ in range(20):
        interval = next_interval(interval, cpu, cpu, asked=1.0)
        seen.append(interval)
    assert seen[-1] == seen[-2] and seen == sorted(seen)
    assert cpu <= CPU_BUDGET * seen[-1] or seen[-1] == MAX_INTERVAL
