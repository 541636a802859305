"""One VM: its QEMU process and the files it was started with."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.identity import GuestSpec


@dataclass(eq=False)
class Vm:
    """A started VM, as the backend and the console watcher know it."""

    spec: GuestSpec
    proc: subprocess.Popen[bytes]
    console: Path
    qmp: Path
    disk: Path
    tap: str | None
    started_ns: int

    @property
    def name(self) -> str:
        return self.spec.name


def qemu_log(logs: Path, name: str) -> Path:
    """Where QEMU's own stdout/stderr go (its complaints, when it refuses to start)."""
    return logs / f"{name}.qemu.log"


def start_qemu(argv: list[str], logs: Path, name: str) -> subprocess.Popen[bytes]:
    """Start one QEMU, its command line kept beside its log for a person to re-run."""
    (logs / f"{name}.qemu.argv").write_text(json.dumps(argv) + "\n")
    with qemu_log(logs, name).open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
        )


def last_words(logs: Path, name: str) -> str:
    """QEMU's last line in its log (not scalelab's own notes), or ""."""
    try:
        said = [ln for ln in qemu_log(logs, name).read_text(errors="replace").splitlines()
                if ln.strip() and not ln.startswith("scalelab:")]
    except OSError:
        said = []
    return said[-1].strip()[:200] if said else ""
