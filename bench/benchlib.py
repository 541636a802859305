"""Shared helpers of the peer benchmarks: environment header, cleanup, processes, tables.

Everything a benchmark creates is registered in a ``Cleanup`` *before* it is created, and
``Cleanup.run()`` undoes it in reverse order without raising, so a failure or a Ctrl-C
(SIGTERM is turned into KeyboardInterrupt by ``trap_signals``) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
if str(PROJECT) not in sys.path:  # run from a checkout, uninstalled
    sys.path.insert(0, str(PROJECT))

from harness.plumbing import host  # noqa: E402
from harness.runinfo import machine_info  # noqa: E402


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the Markdown result."""
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def short_tag(seed: str = "", length: int = 5) -> str:
    """A short hex tag for kernel object names (15-character limit)."""
    text = f"{seed}{os.getpid()}{time.time_ns()}"
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def header(title: str, repeat: int, extra: str = "") -> str:
    """The Markdown heading block: machine, date, load average, repetitions."""
    mi = machine_info()
    mem = (mi.get("memory_bytes") or 0) / 2**30
    lines = [
        f"## {title}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {mi['hostname']}, {mi['cpus']} CPUs ({mi['cpu_model']}), {mem:.0f} GiB, "
        f"{mi['os']}, {mi['platform']}",
        f"- load average at start: {loadavg()} (the host is shared: expect noise)",
        f"- medians of {repeat} repetition(s); ratios are against scalelab in the same run",
    ]
    if extra:
        lines.append(f"- {extra}")
    return "\n".join(lines) + "\n"


def md_table(head: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` gives one of l/r per column (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(head) - 1))
    sep = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def median(values: Sequence[float]) -> float:
    """Median of the values, NaN for none."""
    return statistics.median(values) if values else float("nan")


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    """A number for a table cell; missing or NaN becomes ``n/a``."""
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def missing_modules(names: Iterable[str]) -> list[str]:
    """The Python modules of ``names`` that cannot be imported here."""
    return [n for n in names if importlib_util.find_spec(n) is None]


def missing_commands(names: Iterable[str]) -> list[str]:
    """The commands of ``names`` that are not on PATH."""
    return [n for n in names if shutil.which(n) is None]


# -- cleanup ---------------------------------------------------------------------------------


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass
class Cleanup:
    """A LIFO of undo actions, registered before the resource they undo exists."""

    actions: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def add(self, what: str, undo: Callable[[], None]) -> None:
        self.actions.append((what, undo))

    def run(self) -> list[str]:
        """Undo everything (newest first); returns the problems met, never raises.

        SIGINT/SIGTERM/SIGHUP are held back while it runs (and delivered afterwards), so a
        second Ctrl-C cannot cut a cleanup short."""
        problems = []
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            while self.actions:
                what, undo = self.actions.pop()
                try:
                    undo()
                except BaseException as exc:
                    problems.append(f"{what}: {type(exc).__name__}: {exc}")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return problems


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def trap_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` cleans up."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    """A command's stdout (the harness's own host runner); with ``check`` a failure raises
    LabError naming the command and what it said."""
    if check:
        return host.check(argv, stdin=stdin)
    return host.run(argv, stdin=stdin).stdout


def ip_batch(lines: Sequence[str], force: bool = False) -> None:
    """One ``ip -batch`` for many link/netns commands."""
    host.ip_batch(lines, force=force)


def umount(path: Path) -> None:
    """Unmount (lazily if busy); missing mounts are fine."""
    if not host.run(["umount", str(path)]).ok:
        host.run(["umount", "-l", str(path)])


def mount_image_ro(image: Path, where: Path, cleanup: Cleanup) -> Path:
    """Loop-mount ``image`` read-only (no journal replay) at ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    cleanup.add(f"umount {where}", lambda: umount(where))
    run(["mount", "-o", "loop,ro,noload", str(image), str(where)])
    return where


# -- processes -------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def process_tree(root: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and all its descendants (by parent pid)."""
    kids = _children_map() if kids is None else kids
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_pss(roots: dict[str, int]) -> dict[str, int]:
    """guest → summed PSS of its process tree (the tool's per-guest monitor included)."""
    kids = _children_map()
    return {g: sum(pss_bytes(p) for p in process_tree(r, kids)) for g, r in roots.items()}


def kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants."""
    for pid in process_tree(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def du_bytes(paths: dict[str, Path]) -> dict[str, int]:
    """guest → allocated bytes under its path (one ``du`` for all)."""
    if not paths:
        return {}
    back = {str(p): g for g, p in paths.items()}
    out = subprocess.run(["du", "-sk", *back], capture_output=True, text=True, check=False)
    result = {}
    for line in out.stdout.splitlines():
        kib, _, path = line.partition("\t")
        if path in back:
            result[back[path]] = int(kib) * 1024
    return result


def _cpu_ticks(pid: int) -> int:
    """utime+stime of a process and of its reaped children, in clock ticks (0 if gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])
    return 0


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds used so far by the process trees under ``roots`` (reaped ones included)."""
    kids = _children_map()
    ticks = sum(_cpu_ticks(p) for r in roots for p in process_tree(r, kids))
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its waited-for child processes."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime
