"""Reading domUs' resources from dom0's own tools: the parsers on the output formats of
``xl list``, ``/proc/net/dev`` and blkback's statistics as Xen 4.17's dom0 prints them (the nested
xen test in test_xen.py checks the same path against a real dom0)."""

# The tools' tables are kept as they print them, however wide.
# ruff: noqa: E501
from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from harness.backends.base import Guest
from harness.backends.xen.telemetry import (
    NET_MARK,
    ROUND,
    VBD_GLOB,
    VBD_MARK,
    domu_samples,
    parse_vbd_stats,
)
from harness.identity import make_specs
from harness.telemetry.sample import Sample

XL_LIST = """\
Name                                        ID   Mem VCPUs\tState\tTime(s)
Domain-0                                     0   512     2     r-----      45.3
sl-run1-g000                                 3   128     1     -b----       3.2
sl-run1-g001                                 4   192     1     r-----      11.0
"""

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
vif3.0:    5000      40    0    1    0     0          0         0    12000      60    0    2    0     0       0          0
vif4.0:     700       7    0    0    0     0          0         0      900       9    0    0    0     0       0          0
"""

# What the round's loop over blkback's statistics prints: a device per line, 2 for g000.
VBDS = """\
vbd-3-51712 20480 0
vbd-3-51728 96 160
vbd-4-51712 4096 0
vbd-4-51728 0 64
not-a-vbd 1 2
"""


def guests() -> list[Guest]:
    specs = make_specs("run1", 3, ipaddress.IPv4Network("10.213.7.0/24"))
    return [Guest(s, s.address, info={"domain": f"sl-run1-{s.name}"}) for s in specs]


def by_key(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.guest, s.resource): s.value for s in samples}


def test_a_round_reads_cpu_memory_the_vif_and_the_disks() -> None:
    got = by_key(domu_samples(f"{XL_LIST}{NET_MARK}\n{NET_DEV}{VBD_MARK}\n{VBDS}", guests()))
    assert got[("g000", "cpu_seconds")] == 3.2 and got[("g001", "cpu_seconds")] == 11.0
    assert got[("g000", "memory_bytes")] == 128 << 20
    # vif3.0 is g000's back end: what it receives, the guest sent.
    assert got[("g000", "net_tx_bytes")] == 5000 and got[("g000", "net_rx_bytes")] == 12000
    assert got[("g000", "net_drops")] == 3
    assert got[("g001", "net_tx_packets")] == 7
    # Both of g000's devices (domid 3), summed.
    assert got[("g000", "disk_read_bytes")] == (20480 + 96) * 512
    assert got[("g000", "disk_written_bytes")] == 160 * 512
    assert got[("g001", "disk_written_bytes")] == 64 * 512
    assert not any(g == "g002" for g, _ in got)  # its domain left xl list: no samples


def test_a_dom0_without_blkback_counters_gives_no_disk_rows() -> None:
    got = by_key(domu_samples(f"{XL_LIST}{NET_MARK}\n{NET_DEV}{VBD_MARK}\n", guests()))
    assert ("g000", "cpu_seconds") in got
    assert not any(r.startswith("disk_") for _, r in got)


def test_vbd_lines_by_domid() -> None:
    assert parse_vbd_stats(VBDS) == {3: (20576, 160), 4: (4096, 64)}
    assert parse_vbd_stats("vbd-x-1 2 3\nvbd-5-1 2") == {}


def test_the_round_reads_blkback_counters_from_sysfs(tmp_path: Path) -> None:
    """The round's own shell loop, run by a real sh over a tree laid out as dom0's sysfs
    (``vbd-<domid>-<dev>/statistics/{rd,wr}_sect``, one number and a newline each)."""
    for dev, rd, wr in (("vbd-1-51712", 28350, 0), ("vbd-1-51728", 96, 336)):
        stats = tmp_path / dev / "statistics"
        stats.mkdir(parents=True)
        (stats / "rd_sect").write_text(f"{rd}\n")
        (stats / "wr_sect").write_text(f"{wr}\n")
    (tmp_path / "vif-1-0").mkdir()  # not a block device: left out
    script = ROUND.replace(VBD_GLOB, f"{tmp_path}/vbd-*").replace("xl list", "true")
    out = subprocess.run(["sh", "-c", script, "sh"], capture_output=True, text=True,
                         check=True).stdout
    assert parse_vbd_stats(out.split(VBD_MARK, 1)[1]) == {1: (28350 + 96, 336)}
