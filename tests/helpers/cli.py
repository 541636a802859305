"""Running the ``scalelab`` command as a user would, and checking how it fails."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from leaks import PROJECT


def scalelab(*args: str, cwd: Path = PROJECT, timeout: float = 300,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``scalelab ARGS`` in a child process (``env`` added to ours); its output as text."""
    argv = [sys.executable, "-m", "harness.cli", *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def scalelab_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """``scalelab ARGS | head -0``: stdout is a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=PROJECT,
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)


def one_clear_line(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failure that says what went wrong in one line of stderr (no traceback)."""
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("scalelab: ")
    for n in needles:
        assert n in lines[0], lines[0]


def ssh_answers(config: Path, guest: str, timeout: float = 8) -> bool:
    """Whether ``guest`` answers ``ssh -F config guest hostname`` (OpenSSH, strictly
    checked, as a person types it) with its own name within ``timeout`` seconds.  A paused
    guest says nothing at all: its kernel takes the connection, its frozen sshd never
    answers."""
    try:
        out = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o",
                              "ConnectTimeout=3", guest, "hostname"],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and out.stdout.strip() == guest
