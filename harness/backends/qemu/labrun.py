"""``QemuRun``: what one run of the qemu backend is made of, known in full once ``prepare``
starts, so nothing in it is ever None: the run's tag and bridge, the image, the directory of
its VMs' disks and QMP sockets, and the thread that follows their consoles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.backends.base import RunContext
from harness.backends.qemu.console import ConsoleWatcher
from harness.image.cache import Image


@dataclass(frozen=True)
class QemuRun:
    ctx: RunContext
    image: Image
    tag: str
    bridge: str
    #: The VMs' writable disks and QMP sockets (in the run's state directory).
    dir: Path
    consoles: ConsoleWatcher

    @property
    def logs(self) -> Path:
        """Where each VM's console and QEMU's own output go (under the report)."""
        return self.ctx.run_dir / "guests"
