"""Snapshots of the lab resources on this host, to prove a test left nothing behind."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]
    links: frozenset[str]
    mounts: frozenset[str]
    loops: frozenset[str]
    procs: frozenset[str]
    cgroups: frozenset[str]
    states: frozenset[str]

    def diff(self, later: Snapshot) -> dict[str, set[str]]:
        out = {}
        for field in self.__dataclass_fields__:
            new = set(getattr(later, field)) - set(getattr(self, field))
            if new:
                out[field] = new
        return out


def _lines(argv: list[str]) -> frozenset[str]:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    return frozenset(ln.strip() for ln in res.stdout.splitlines() if ln.strip())


def snapshot() -> Snapshot:
    with open("/proc/self/mountinfo") as f:
        mounts = frozenset(ln.split()[4] for ln in f)
    cg = Path("/sys/fs/cgroup")
    cgroups = frozenset(
        str(p) for p in cg.glob("*/scalelab/*") if p.is_dir()
    ) | frozenset(str(p) for p in cg.glob("scalelab/*") if p.is_dir())
    states = Path("/run/scalelab")
    return Snapshot(
        netns=_lines(["ip", "netns", "list"]),
        links=frozenset(p.name for p in Path("/sys/class/net").iterdir()),
        mounts=mounts,
        loops=_lines(["losetup", "-a"]),
        procs=_lines(["pgrep", "-f", "sshd -D -e -f /etc/scalelab"]),
        cgroups=cgroups,
        states=frozenset(p.name for p in states.iterdir()) if states.is_dir() else frozenset(),
    )
