"""The image build's commands: each runs with its latest line shown as progress and all of
its output kept in the build log; a chroot script runs inside the rootfs being built.

Both the base build (``build``) and the VM parts (``vm``) run their commands through here,
so neither has to import the other for it.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.errors import UserError

#: Where a build reports what it is doing, one short line at a time.
Progress = Callable[[str], None]


def stream(argv: list[str], progress: Progress, what: str, log: Path) -> None:
    """Run ``argv``, showing its latest line as progress and keeping all of it in ``log``."""
    with log.open("ab") as logf:
        logf.write(f"$ {shlex.join(argv)}\n".encode())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        tail: list[str] = []
        for raw in proc.stdout:
            logf.write(raw)
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail = [*tail, line][-30:]
                progress(f"{what}: {line[:100]}")
        rc = proc.wait()
    if rc != 0:
        missing = [ln for ln in tail
                   if "Couldn't find these debs" in ln or "Unable to locate" in ln]
        reason = missing[-1] if missing else (tail[-1] if tail else f"exit status {rc}")
        raise UserError(f"image build failed in {what}: {reason} (full log: {log})")


def chroot_script(rootfs: Path, script: str) -> list[str]:
    """argv that runs ``script`` in ``rootfs`` with /proc, /sys and /dev inside a private
    mount namespace, so none of those mounts can outlive the command."""
    r = shlex.quote(str(rootfs))
    inner = (
        f"mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && "
        f"mount --rbind /dev {r}/dev && "
        f"exec chroot {r} /bin/sh -ec {shlex.quote(script)}"
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", inner]
