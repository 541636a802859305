"""Commands on this host: one runner for every backend, the journal's cleanup and the benches.

``run`` never raises for a command that fails (the result says how: 127 when the program does
not exist, 124 when it ran out of time); ``check`` is for commands that must work, and raises
a LabError that names the command and what it said.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Sequence

from harness.errors import LabError
from harness.plumbing.result import CommandResult


def run(argv: Sequence[str], *, stdin: str | None = None,
        timeout: float | None = None) -> CommandResult:
    """Run ``argv`` (no shell) and wait for it; its output as text."""
    argv = list(argv)
    start = time.time_ns()
    try:
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                             timeout=timeout, check=False)
    except FileNotFoundError:
        return CommandResult("", shlex.join(argv), 127, "", f"{argv[0]}: command not found",
                             start, time.time_ns())
    except subprocess.TimeoutExpired:
        return CommandResult("", shlex.join(argv), 124, "",
                             f"{shlex.join(argv)[:80]} did not finish in {timeout:g} s",
                             start, time.time_ns())
    return CommandResult("", shlex.join(argv), out.returncode, out.stdout, out.stderr, start,
                         time.time_ns())


def check(argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None,
          what: str | None = None) -> str:
    """``argv``'s stdout; a LabError saying ``what`` (default: the command) failed, and why."""
    res = run(argv, stdin=stdin, timeout=timeout)
    if not res.ok:
        label = what or f"{shlex.join(list(argv)[:3])}…"
        raise LabError(f"{label} failed: {res.message()}")
    return res.stdout


def ip_batch(lines: Sequence[str], *, force: bool = False) -> CommandResult | None:
    """Many ``ip`` changes in one process (``ip -batch``). With ``force`` it goes on past
    lines that fail (a link already gone) and never raises; else a failure is a LabError."""
    if not lines:
        return None
    argv = ["ip", "-force", "-batch", "-"] if force else ["ip", "-batch", "-"]
    text = "\n".join(lines) + "\n"
    if force:
        return run(argv, stdin=text)
    check(argv, stdin=text, what="ip -batch")
    return None


def bridge_batch(lines: Sequence[str]) -> None:
    """Many ``bridge`` changes (forwarding entries) in one process; a failure is a LabError."""
    if lines:
        check(["bridge", "-batch", "-"], stdin="\n".join(lines) + "\n", what="bridge -batch")


def mounted(path: str) -> bool:
    """Whether ``path`` is a mount point in this process's mount namespace (a directory
    bind-mounted on itself included, which ``Path.is_mount`` cannot see)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)
