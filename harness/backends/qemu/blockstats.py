"""A VM's disk traffic as QEMU counts it (QMP ``query-blockstats``): bytes and operations
read and written per drive, since the VM started.

These are what the guest asked of its disks — the shared read-only image and its writable
layer apart — which the QEMU process's own I/O counters cannot tell (they mix both drives,
the page cache and the console).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.backends.qemu.qmp import QmpError, qmp
from harness.telemetry.sample import Sample

#: QMP's stats field → (resource, unit) of the sample it becomes.
FIELDS = {
    "rd_bytes": ("disk_read_bytes", "B"),
    "wr_bytes": ("disk_written_bytes", "B"),
    "rd_operations": ("disk_reads", ""),
    "wr_operations": ("disk_writes", ""),
}


def block_samples(guest: str, reply: Any) -> list[Sample]:
    """``query-blockstats``' answer → counters per drive (item: the drive's id)."""
    out: list[Sample] = []
    for dev in reply if isinstance(reply, list) else []:
        stats = dev.get("stats") if isinstance(dev, dict) else None
        if not isinstance(stats, dict):
            continue
        item = str(dev.get("device") or dev.get("qdev") or dev.get("node-name") or "")
        for key, (resource, unit) in FIELDS.items():
            value = stats.get(key)
            if isinstance(value, int | float):
                out.append(Sample(guest, resource, float(value), unit, "counter", item))
    return out


def read_block_samples(guest: str, socket: Path, timeout: float = 1.0) -> list[Sample]:
    """Ask the VM's QMP socket; nothing when QEMU does not answer in ``timeout`` (a paused
    or dying VM must not hold up the sampler's round)."""
    try:
        return block_samples(guest, qmp(socket, "query-blockstats", timeout=timeout))
    except QmpError:
        return []
