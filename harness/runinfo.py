"""Run identity and ``run.json``: what ran, where, on what, and when."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import UserError

PACKAGES = ("scalelab", "pytest", "paramiko", "pandas", "pyarrow", "jinja2", "matplotlib",
            "cryptography")


def new_run_id() -> str:
    now = dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def make_run_dir(reports_dir: Path, run_id: str) -> Path:
    """Create ``reports/<run_id>/``; an unwritable reports directory is a UserError."""
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
        run_dir = reports_dir / run_id
        run_dir.mkdir()
        probe = run_dir / ".writable"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write the reports directory {reports_dir}: {exc.strerror}"
        ) from None
    return run_dir


def point_latest(reports_dir: Path, run_dir: Path) -> None:
    """Atomically make ``reports/latest`` a relative symlink to ``run_dir``."""
    link = reports_dir / "latest"
    tmp = reports_dir / f".latest-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def machine_info() -> dict[str, Any]:
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_bytes": mem,
        "platform": platform.platform(),
        "os": _os_release(),
    }


def _os_release() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def git_commit(project_dir: Path) -> str | None:
    res = subprocess.run(
        ["git", "-C", str(project_dir), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=False,
    )
    if res.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(project_dir), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=False,
    )
    return res.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def base_info(run_id: str, project_dir: Path, report_tz: str | None) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "started_utc": utc_now_iso(),
        "ended_utc": None,
        "command_line": list(sys.argv),
        "cwd": str(Path.cwd()),
        "report_tz": report_tz,
        "machine": machine_info(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_commit": git_commit(project_dir),
    }


def write_run_json(run_dir: Path, info: dict[str, Any]) -> Path:
    path = run_dir / "run.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path
