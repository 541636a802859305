"""Partial failure as data: a scenario passes on a quorum of guests, not on the first error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from harness.ssh import GroupResult


class QuorumNotMet(AssertionError):
    """Fewer guests succeeded than the scenario requires."""


def check_quorum(groups: GroupResult | Iterable[GroupResult], fraction: float) -> float:
    """Fail unless at least ``fraction`` of the guests succeeded in every group.

    A guest counts as succeeded in a group when its result is there and ok.  Returns the
    lowest success rate seen.  The error names the failure classes and a few guests.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"quorum fraction {fraction} must be in (0, 1]")
    group_list = [groups] if isinstance(groups, GroupResult) else list(groups)
    worst = 1.0
    for g in group_list:
        rate = g.success_rate()
        worst = min(worst, rate)
        if rate < fraction:
            failed = g.failed
            classes = Counter(failed.values())
            shown = ", ".join(f"{c}: {n}" for c, n in classes.most_common())
            some = ", ".join(sorted(failed)[:5])
            first = sorted(failed)[0]
            raise QuorumNotMet(
                f"{len(g) - len(failed)}/{len(g)} guests succeeded ({rate:.0%}), "
                f"quorum is {fraction:.0%}; failures by class: {shown}; e.g. {some}; "
                f"{first}: {g.reason(first)}"
            )
    return worst
