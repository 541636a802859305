"""``Sample``: one value of one resource of a guest (or of the host, guest ""), as read."""

from __future__ import annotations

from dataclasses import dataclass
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
