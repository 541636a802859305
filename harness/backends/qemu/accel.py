"""Choosing the accelerator: KVM only when a KVM guest really runs here, else TCG.

``/dev/kvm`` existing proves nothing: under nested virtualisation QEMU may fail on MSRs or
hang with the guest never printing a line.  So a throw-away VM boots the image's kernel to
a deliberate panic, and the answer is kept for this boot of the host (a hanging test VM
costs its whole timeout; once per boot is enough).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.backends.qemu.argv import KVM_ARGS, QEMU
from harness.backends.qemu.hostfacts import boot_id, qemu_version
from harness.errors import UserError
from harness.image.cache import cache_dir

ACCEL_CACHE_FILE = "qemu-accel.json"
KVM_PROBE_TIMEOUT = 6.0
#: A kernel command line on which the kernel panics at once (no root, no init) and, with
#: -no-reboot, QEMU exits: the whole boot of a kernel, in well under a second on real KVM.
PROBE_APPEND = "console=ttyS0 panic=-1 root=/dev/scalelab-probe rdinit=/scalelab-probe"

#: ``kernel`` → (KVM works, why); ``kvm_works`` in use, a stand-in in tests.
KvmCheck = Callable[[Path], tuple[bool, str]]


def probe_argv(kernel: Path, console: Path) -> list[str]:
    return [
        QEMU, *KVM_ARGS, "-machine", "pc", "-m", "64", "-smp", "1",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{console}", "-kernel", str(kernel), "-append", PROBE_APPEND,
    ]


def probe_kvm(kernel: Path, timeout: float = KVM_PROBE_TIMEOUT) -> tuple[bool, str]:
    """Does a KVM guest actually run here?  Only a kernel that gets to its panic message
    within ``timeout`` counts."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    with tempfile.TemporaryDirectory(prefix="scalelab-kvm-") as tmp:
        console = Path(tmp) / "console"
        proc = subprocess.Popen(
            probe_argv(kernel, console), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return False, f"a KVM test VM did not boot within {timeout:.0f}s"
        text = console.read_text(errors="replace") if console.exists() else ""
    if "Kernel panic" in text:
        return True, "a KVM test VM booted"
    return False, probe_failure(proc.returncode, err.decode(errors="replace"), text)


def probe_failure(status: int, stderr: str, console: str) -> str:
    """Why the KVM test VM did not get to its panic, from what QEMU and the kernel said."""
    said = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if said:
        return f"KVM test VM failed: {said[-1]}"
    shown = [ln.strip() for ln in console.splitlines() if ln.strip()]
    if status == 0 and not shown:
        # -no-reboot turns a reset into an exit: the vCPU faulted before the kernel's
        # first line (a PVM or nested KVM that cannot run a stock kernel).
        return ("the KVM test VM reset before its kernel printed a line (exit status 0): "
                "this KVM does not run a stock kernel (PVM, or nested KVM without support)")
    last = f"; its console's last line: {shown[-1][:120]}" if shown else ""
    return f"KVM test VM stopped with exit status {status} before its kernel panic{last}"


def kvm_works(kernel: Path) -> tuple[bool, str]:
    """``probe_kvm``, remembered for this boot of the host, this QEMU and this kernel."""
    key = f"{boot_id()}|{shutil.which(QEMU)}|{qemu_version()}|{kernel.resolve()}"
    cache_file = cache_dir() / ACCEL_CACHE_FILE
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return bool(cached["kvm"]), str(cached["reason"]) + " (cached)"
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    ok, reason = probe_kvm(kernel)
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "kvm": ok, "reason": reason}))
        tmp.replace(cache_file)
    return ok, reason


def choose_accel(want: str, kernel: Path, check: KvmCheck = kvm_works) -> tuple[str, str]:
    """The accelerator for ``accel=want`` and why; ``accel=kvm`` where KVM does not work is
    a UserError (asked for, not possible)."""
    if want == "tcg":
        return "tcg", "asked for (accel=tcg)"
    ok, reason = check(kernel)
    if ok:
        return "kvm", reason
    if want == "kvm":
        raise UserError(f"qemu option accel=kvm: {reason}; use accel=tcg or accel=auto")
    return "tcg", f"KVM not usable: {reason}"
