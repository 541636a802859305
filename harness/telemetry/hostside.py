"""This lab host's resources, read from /proc: CPU time per core, load, memory, pressure
(where the kernel has /proc/pressure) and the CPU the harness itself has used."""

from __future__ import annotations

import os
from pathlib import Path

from harness.telemetry.sample import Sample

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_samples(stat: str) -> list[Sample]:
    """Busy and total seconds per core from /proc/stat (idle and iowait are not busy)."""
    out = []
    for line in stat.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(f) for f in fields[:8]]
        total = sum(ticks)
        idle = ticks[3] + ticks[4]
        out.append(Sample("", "cpu_busy_seconds", (total - idle) / _TICK, "s", "counter", name))
        out.append(Sample("", "cpu_total_seconds", total / _TICK, "s", "counter", name))
    return out


def memory_samples(meminfo: str) -> list[Sample]:
    values = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            values[key] = int(rest.split()[0]) * 1024
    out = []
    if "MemTotal" in values:
        out.append(Sample("", "memory_total_bytes", float(values["MemTotal"]), "B"))
        if "MemAvailable" in values:
            used = values["MemTotal"] - values["MemAvailable"]
            out.append(Sample("", "memory_used_bytes", float(used), "B"))
    return out


def pressure_samples(root: Path = PROC / "pressure") -> list[Sample]:
    """``some avg10`` of cpu, memory and io: the share of the last 10 s something waited."""
    out = []
    for what in ("cpu", "memory", "io"):
        try:
            line = (root / what).read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        fields = dict(f.split("=", 1) for f in line.split()[1:])
        out.append(Sample("", f"pressure_{what}_some_avg10", float(fields["avg10"]), "%"))
    return out


def process_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    stat = (PROC / str(pid) / "stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def host_samples() -> list[Sample]:
    """One round of this host's samples; a file the kernel does not have is left out."""
    out = cpu_samples((PROC / "stat").read_text())
    load1 = float((PROC / "loadavg").read_text().split()[0])
    out.append(Sample("", "load1", load1, ""))
    out += memory_samples((PROC / "meminfo").read_text())
    out += pressure_samples()
    out.append(Sample("", "harness_cpu_seconds", process_cpu_seconds(), "s", "counter"))
    return out
