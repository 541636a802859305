"""``Sample``: one value of one resource of a guest (or of the host, guest ""), as read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: A counter only grows (CPU seconds, bytes sent): rates are derived from two of them.
#: A gauge is a level (memory in use, processes, load).
Kind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class Sample:
    guest: str
    resource: str
    value: float
    unit: str
    kind: Kind = "gauge"
    #: Several series of one resource (a host's CPU core: "cpu0").
    item: str = ""


@dataclass(frozen=True)
class HostRound:
    """One lab host's samples of a round (a cluster lab's shard): taken on that host at
    ``t_ns``, already put on the run's clock (the shard's measured offset taken off)."""

    lab_host: str
    t_ns: int
    samples: list[Sample] = field(default_factory=list)
