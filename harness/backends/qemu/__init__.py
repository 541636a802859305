"""The qemu backend: every guest is a QEMU virtual machine booting the shared image.

Per run: the accelerator is chosen (``accel=auto`` boots a throw-away KVM VM to see whether
KVM really runs guests here, else TCG), and a bridge carries the lab subnet (or, when taps
are impossible, each VM gets user networking with one forwarded loopback port).
Per guest: a small ext4 disk made on the host from the guest's identity tree
(``mkfs.ext4 -d``, so the host key is pinned before boot), a tap on the bridge, and one
``qemu-system-x86_64`` with the image's kernel and initramfs, the base image attached
read-only (``/dev/vda``), its own disk (``/dev/vdb``) as the overlay's upper layer, a serial
console written to ``<run>/guests/<name>.console.log`` and a QMP socket for shutdown and
faults.  A thread follows the consoles and reports ``booted`` when the guest's init prints
its marker, so ``up()`` returns as soon as every VM is spawned.

    qemu://?memory=256M&accel=auto&net=auto&init=lean

Options: ``memory`` guest RAM (the lab's --guest-memory wins); ``accel`` auto|kvm|tcg;
``net`` auto|tap|user (auto: tap unless impossible); ``init`` lean|systemd; ``upper``
disk|tmpfs (where the overlay's writable layer lives); ``disk`` size of the writable disk;
``smp`` vCPUs; ``cpu`` TCG CPU model; ``tb_size`` TCG translation cache (MiB); ``quiet``
1|0 (kernel messages on the console); ``append`` more kernel command line.

Modules: ``options`` (the URL's options, checked once), ``argv`` (a VM's command line, a
pure function), ``accel`` (is KVM usable?), ``hostfacts`` (what is read from this host),
``qmp`` (QEMU's control socket), ``vm`` (one QEMU process), ``console`` (the boot marker
watcher) and ``backend`` (``QemuBackend``).
"""

from harness.backends.qemu.accel import choose_accel, kvm_works, probe_kvm
from harness.backends.qemu.argv import QEMU, VmNic, VmPaths, kernel_cmdline, qemu_argv
from harness.backends.qemu.backend import QemuBackend
from harness.backends.qemu.console import BOOT_MARKER, ConsoleWatcher
from harness.backends.qemu.hostfacts import ext4_used_bytes, mem_available, qemu_version
from harness.backends.qemu.options import QemuOptions
from harness.backends.qemu.qmp import QmpError, qmp

__all__ = [
    "BOOT_MARKER", "QEMU", "ConsoleWatcher", "QemuBackend", "QemuOptions", "QmpError", "VmNic",
    "VmPaths", "choose_accel", "ext4_used_bytes", "kernel_cmdline", "kvm_works",
    "mem_available", "probe_kvm", "qemu_argv", "qemu_version", "qmp",
]
