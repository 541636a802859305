"""What each domU costs dom0: the memory Xen gives it and the blocks its writable disk holds
(one ``xl list`` and one ``du`` for all the guests asked about)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.backends.base import Footprint, Guest
from harness.backends.xen.dom0 import Dom0
from harness.backends.xen.xl import xl_list


def disk_bytes(d: Dom0, guests: Sequence[Guest]) -> dict[str, int]:
    """Guest name → bytes its writable disk holds on dom0."""
    disks = {str(g.info.get("disk")): g.name for g in guests if g.info.get("disk")}
    used: dict[str, int] = {}
    if disks:
        out = d.run(["du", "-k", *disks]).stdout
        for line in out.splitlines():
            kib, _, path = line.partition("\t")
            if path in disks and kib.isdigit():
                used[disks[path]] = int(kib) * 1024
    return used


def domu_footprint(d: Dom0, guests: Sequence[Guest]) -> Footprint:
    """Per guest: ``memory_bytes`` (Xen's allocation) and ``upper_bytes`` (its disk)."""
    rows = xl_list(d)
    used = disk_bytes(d, guests)
    result: Footprint = {}
    for g in guests:
        values: dict[str, tuple[float, str]] = {}
        row = rows.get(str(g.info.get("domain")))
        if row is not None:
            values["memory_bytes"] = (float(int(row[2]) << 20), "B")
        if g.name in used:
            values["upper_bytes"] = (float(used[g.name]), "B")
        result[g.name] = values
    return result
