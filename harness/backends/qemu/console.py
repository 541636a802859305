"""Following the VMs' serial consoles: ``booted`` is when the guest's init prints its
marker, so ``up()`` can return as soon as every VM is spawned and the boot is still timed.

One thread follows every console of the backend (reading files that grow, at 20 Hz); it
stops by itself once every VM has booted or exited and no more are being started.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.backends.base import PhaseHook, now_ns
from harness.backends.qemu.vm import Vm, qemu_log

#: What the guest's init prints first (lean init, or the systemd unit): "booted".
BOOT_MARKER = b"scalelab-init: userspace"
POLL_SECONDS = 0.05
#: Bytes kept between reads, so a marker split across two reads is still found.
TAIL_BYTES = 256


def find_boot(buf: bytes) -> tuple[bool, float | None]:
    """Whether ``buf`` holds the whole marker line, and the guest uptime it states."""
    at = buf.find(BOOT_MARKER)
    if at < 0 or b"\n" not in buf[at:]:
        return False, None
    line = buf[at:buf.index(b"\n", at)].decode(errors="replace")
    m = re.search(r"uptime=([\d.]+)", line)
    return True, float(m.group(1)) if m else None


@dataclass(eq=False)
class Followed:
    """One console and what has been read of it."""

    vm: Vm
    offset: int = 0
    tail: bytes = field(default=b"", repr=False)
    booted_ns: int | None = None
    boot_uptime: float | None = None
    exit_noted: bool = False

    @property
    def pending(self) -> bool:
        return self.booted_ns is None and not self.exit_noted


class ConsoleWatcher:
    """Reports each VM's ``booted`` phase through ``on_phase``; notes in the VM's QEMU log
    (``logs``) when QEMU exited before its guest booted."""

    def __init__(self, on_phase: PhaseHook, logs: Path) -> None:
        self.on_phase = on_phase
        self.logs = logs
        self._followed: dict[str, Followed] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spawning = False

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """While VMs are being started, the thread stays even when none is pending."""
        self._stop.clear()
        self._spawning = True
        try:
            yield
        finally:
            self._spawning = False

    def add(self, vm: Vm) -> None:
        with self._lock:
            self._followed[vm.name] = Followed(vm)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="qemu-boot", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def clear(self) -> None:
        with self._lock:
            self._followed.clear()

    def boot_uptime(self, name: str) -> float | None:
        """Seconds of guest uptime when its init started, once seen."""
        f = self._followed.get(name)
        return f.boot_uptime if f else None

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                pending = [f for f in self._followed.values() if f.pending]
            if not pending and not self._spawning:
                return
            for f in pending:
                self.poll(f)

    def poll(self, f: Followed) -> None:
        """Read what is new on one console; public so a test can step it by hand."""
        try:
            with f.vm.console.open("rb") as fh:
                fh.seek(f.offset)
                data = fh.read()
        except OSError:
            data = b""
        f.offset += len(data)
        buf = f.tail + data
        booted, uptime = find_boot(buf)
        if booted:
            f.booted_ns, f.boot_uptime = now_ns(), uptime
            self.on_phase(f.vm.name, "booted", f.vm.started_ns, f.booted_ns)
            return
        f.tail = buf[-TAIL_BYTES:]
        if f.vm.proc.poll() is not None:
            f.exit_noted = True
            # Say it where a person looks first; the SSH wait will report the guest failed.
            with contextlib.suppress(OSError), qemu_log(self.logs, f.vm.name).open("a") as fh:
                fh.write(f"scalelab: qemu exited with status {f.vm.proc.returncode} before "
                         "the guest booted (see its console log)\n")

