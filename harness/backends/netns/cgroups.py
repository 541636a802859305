"""Per-guest cgroups (v1: one directory per controller; v2: one directory): limits, the
memory a guest uses, and the freezer that pauses it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harness.plumbing.units import parse_size

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: cpuacct counts each guest's CPU time (v2's cpu.stat does it in the one directory).
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")


def read_small(path: str | Path, limit: int = 64) -> bytes | None:
    """A small cgroup file, read with one open and one read (the sampler reads thousands of
    them a round: pathlib's extra work shows); None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_int(path: str | Path) -> int | None:
    """An integer file of a cgroup, or None."""
    data = read_small(path)
    try:
        return None if data is None else int(data)
    except ValueError:
        return None


class Cgroups:
    """Per-guest cgroups on v1 (one directory per controller) or v2 (one directory)."""

    def __init__(self, run_id: str) -> None:
        self.v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        self.base = f"scalelab/{run_id}"
        self._stat_files: dict[str, tuple[str, str, str]] = {}

    def stat_files(self, guest: str) -> tuple[str, str, str]:
        """The guest's CPU, memory and process-count files, as strings made once: at 256
        guests a round of sampling spent half its CPU joining these paths with pathlib."""
        files = self._stat_files.get(guest)
        if files is None:
            root, base = str(CGROUP_ROOT), self.base
            if self.v2:
                d = f"{root}/{base}/{guest}"
                files = (f"{d}/cpu.stat", f"{d}/memory.current", f"{d}/pids.current")
            else:
                files = (f"{root}/cpuacct/{base}/{guest}/cpuacct.usage",
                         f"{root}/memory/{base}/{guest}/memory.usage_in_bytes",
                         f"{root}/pids/{base}/{guest}/pids.current")
            self._stat_files[guest] = files
        return files

    def paths(self, guest: str) -> list[Path]:
        if self.v2:
            return [CGROUP_ROOT / self.base / guest]
        return [
            CGROUP_ROOT / c / self.base / guest
            for c in V1_CONTROLLERS
            if (CGROUP_ROOT / c).is_dir()
        ]

    def run_dirs(self) -> list[Path]:
        """The run-level parent directories (removed after the guests')."""
        if self.v2:
            return [CGROUP_ROOT / self.base, CGROUP_ROOT / "scalelab"]
        out = []
        for c in V1_CONTROLLERS:
            if (CGROUP_ROOT / c).is_dir():
                out += [CGROUP_ROOT / c / self.base]
        return out

    def create(self, guest: str, memory: str | None, cpus: float | None) -> list[Path]:
        paths = self.paths(guest)
        if self.v2:
            top = CGROUP_ROOT / "scalelab"
            top.mkdir(exist_ok=True)
            for d in (CGROUP_ROOT, top, CGROUP_ROOT / self.base):
                d.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    (d / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        for p in paths:
            p.mkdir(parents=True, exist_ok=True)
        if memory:
            limit = str(parse_size(memory, "memory size"))
            if self.v2:
                (paths[0] / "memory.max").write_text(limit)
            else:
                (CGROUP_ROOT / "memory" / self.base / guest / "memory.limit_in_bytes").write_text(
                    limit
                )
        if cpus:
            period = 100_000
            quota = int(cpus * period)
            if self.v2:
                (paths[0] / "cpu.max").write_text(f"{quota} {period}")
            else:
                cpu = CGROUP_ROOT / "cpu" / self.base / guest
                (cpu / "cpu.cfs_period_us").write_text(str(period))
                (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        return paths

    def memory_bytes(self, guest: str) -> int | None:
        return read_int(self.stat_files(guest)[1])

    def cpu_seconds(self, guest: str) -> float | None:
        """CPU time the guest's processes have used (user + system), or None if unknown."""
        path = self.stat_files(guest)[0]
        if not self.v2:
            ns = read_int(path)
            return ns / 1e9 if ns is not None else None
        stat = read_small(path, 4096)
        try:
            usec = dict(line.split() for line in (stat or b"").decode().splitlines())
            return int(usec["usage_usec"]) / 1e6
        except (ValueError, KeyError):
            return None

    def processes(self, guest: str) -> int | None:
        return read_int(self.stat_files(guest)[2])

    def freeze(self, guest: str, frozen: bool) -> None:
        if self.v2:
            (CGROUP_ROOT / self.base / guest / "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            state = CGROUP_ROOT / "freezer" / self.base / guest / "freezer.state"
            state.write_text("FROZEN" if frozen else "THAWED")
