"""Regions: groups of guests with a delay matrix between them, for a scenario's length.

The common geo-distribution experiment — two "regions" 40 ms apart, 1 ms inside each —
built from the nemesis's ``degraded`` blocks: every guest of region A delays what it sends
to region B by the A→B delay, and what it sends to the rest of A by the inside delay.  The
delays are one-way (applied where the traffic leaves): a round trip between A and B takes
A→B plus B→A.  The harness's own connections are never delayed.

    with regions(nemesis, {"eu": fleet.names[:8], "us": fleet.names[8:]},
                 between="40ms", inside="1ms"):
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from harness.degrade import Degradation, parse_duration
from harness.errors import UserError
from harness.faults import Nemesis


def delay_matrix(groups: Mapping[str, Sequence[str]],
                 between: str | Mapping[tuple[str, str], str], inside: str = "0",
                 jitter: str = "0") -> dict[tuple[str, str], Degradation]:
    """(from region, to region) → its degradation, for every pair with a delay.

    ``between`` is one delay for every pair of distinct regions, or a mapping naming each
    ordered pair (a pair given one way only holds both ways)."""
    names = list(groups)
    seen: dict[str, str] = {}
    for region, members in groups.items():
        for g in members:
            if g in seen:
                raise UserError(f"guest {g} is in two regions ({seen[g]} and {region})")
            seen[g] = region
    out: dict[tuple[str, str], Degradation] = {}
    for a in names:
        for b in names:
            if a == b:
                delay = inside
            elif isinstance(between, str):
                delay = between
            else:
                delay = between.get((a, b)) or between.get((b, a)) or ""
                if not delay:
                    raise UserError(f"no delay given between regions {a} and {b}")
            if parse_duration(delay, f"delay {a}→{b}") > 0:  # 0: nothing between these
                out[(a, b)] = Degradation.parse(delay=delay, jitter=jitter)
    for (a, b) in (between if not isinstance(between, str) else {}):
        if a not in groups or b not in groups:
            raise UserError(f"delay between {a} and {b}: no such region ({', '.join(names)})")
    return out


@contextlib.contextmanager
def regions(nemesis: Nemesis, groups: Mapping[str, Sequence[str]],
            between: str | Mapping[tuple[str, str], str], inside: str = "0",
            jitter: str = "0") -> Iterator[dict[tuple[str, str], Degradation]]:
    """Give the ``groups`` of guests the delay matrix for the ``with`` block (see above);
    yields the matrix, and every pair is a fault row (a band in the report)."""
    matrix = delay_matrix(groups, between, inside, jitter)
    with contextlib.ExitStack() as stack:
        for (a, b), cond in matrix.items():
            if a == b and len(groups[a]) < 2:
                continue  # a region of one guest has no one inside to delay
            stack.enter_context(nemesis.degraded_by(groups[a], cond, groups[b]))
        yield matrix
