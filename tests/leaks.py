"""Snapshots of the lab resources on this host, to prove a test left nothing behind."""

from __future__ import annotations

import shutil
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


#: The commands a snapshot runs, and the Debian package that has each.
TOOLS = {"ip": "iproute2", "losetup": "util-linux", "pgrep": "procps"}


class LeakCheckBroken(AssertionError):
    """The leak check could not look: a tool is missing or failed.  Never an empty answer,
    which would make every "nothing left behind" assertion pass without checking."""


def require_tools() -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items()
               if shutil.which(tool) is None]
    if missing:
        raise LeakCheckBroken("the leak check needs " + ", ".join(missing)
                              + ": run scripts/setup.sh or apt-get install them")


def _lines(argv: list[str], ok: tuple[int, ...] = (0,)) -> frozenset[str]:
    """Lines of a command's output; a command that fails (exit status not in ``ok``)
    is an error, not an empty set."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        require_tools()
        raise
    if res.returncode not in ok:
        raise LeakCheckBroken(f"leak check: {' '.join(argv)} exited {res.returncode}: "
                              f"{res.stderr.strip()[-300:]}")
    return frozenset(ln.strip() for ln in res.stdout.splitlines() if ln.strip())


def snapshot() -> Snapshot:
    require_tools()
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
        # pgrep exits 1 when nothing matches: that is an answer (no guest sshd), not a failure.
        procs=_lines(["pgrep", "-f", "sshd -D -e -f /etc/scalelab"], ok=(0, 1)),
        cgroups=cgroups,
        states=frozenset(p.name for p in states.iterdir()) if states.is_dir() else frozenset(),
    )
