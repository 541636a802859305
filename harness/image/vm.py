"""The VM parts of an image: a kernel, an initramfs whose hook makes ``/`` an overlay, and
the lean guest init.

Called by ``build()`` for ``Recipe.with_vm()`` once the rootfs holds the kernel and
initramfs-tools.  It installs (from ``harness/image/initramfs/``):

- ``hooks/scalelab-overlayroot``: an initramfs-tools hook that adds the overlay module and
  the virtio/Xen block, network and RNG drivers to the initramfs, and takes udev out of it
  (under TCG it cost about 1.5 s of CPU per boot);
- ``scripts/init-top/scalelab-coldplug``: loads the drivers the guest's devices need, by
  modalias, with one modprobe per pass instead of udev;
- ``scripts/init-bottom/scalelab-overlayroot``: mounts the read-only root as the lower
  layer and a tmpfs or the guest's small disk as the upper one, and switches ``/`` to the
  overlay (``overlayroot=tmpfs`` / ``overlayroot=disk:<dev>`` on the kernel command line);
- ``guest/init`` as ``/usr/lib/scalelab/init``: the lean PID 1 (hostname, address, sshd,
  the recipe's services), and ``guest/scalelab-guest.service`` for systemd boots;

then rebuilds the initramfs inside the rootfs and copies the kernel and initramfs out
beside ``base.img`` (``vmlinuz``, ``initrd.img``), with ``vm.json`` describing them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from harness.errors import UserError
from harness.image.commands import Progress, chroot_script, stream

#: Where the scripts shipped with the package live.
ASSETS = Path(__file__).parent / "initramfs"
#: Where the lean init is installed in the image (``init=`` on the kernel command line).
GUEST_INIT = "/usr/lib/scalelab/init"
#: The DHCP client the lean init runs for ``ip=dhcp``.
GUEST_DHCP_CLIENT = "/usr/lib/scalelab/dhcp-client"
GUEST_UNIT = "scalelab-guest.service"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
VM_INFO = "vm.json"

#: initramfs-tools settings.  MODULES=list: only the modules the hook names (and their
#: dependencies) go in, so the initramfs stays small and quick to unpack under TCG; every
#: other module is on the root image for the booted guest.  No resume device: there is no
#: swap, and looking for one costs boot time.
INITRAMFS_CONF = """\
# scalelab: a small initramfs for guests sharing one read-only root
MODULES=list
BUSYBOX=y
COMPRESS=gzip
RESUME=none
"""


def kernel_version(rootfs: Path) -> str:
    """The version of the one kernel installed in ``rootfs``."""
    versions = sorted(
        p.name.removeprefix("vmlinuz-")
        for p in (rootfs / "boot").glob("vmlinuz-*")
        if (rootfs / "lib/modules" / p.name.removeprefix("vmlinuz-")).is_dir()
    )
    if not versions:
        raise UserError(
            "image build: the rootfs has no kernel: the VM packages "
            "(linux-image-cloud-amd64) did not install"
        )
    # Several kernels only if a recipe added one: boot the newest.
    return max(versions, key=_version_key)


def _version_key(v: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", v)]


def _install(src: Path, dest: Path, mode: int = 0o755) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def install_guest_files(rootfs: Path) -> None:
    """Copy the hook, the init-bottom script, the lean init and the unit into ``rootfs``."""
    conf = rootfs / "etc/initramfs-tools"
    _install(ASSETS / "hooks/scalelab-overlayroot", conf / "hooks/scalelab-overlayroot")
    for script in ("scripts/init-top/scalelab-coldplug",
                   "scripts/init-bottom/scalelab-overlayroot"):
        _install(ASSETS / script, conf / script)
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/scalelab.conf").write_text(INITRAMFS_CONF)
    _install(ASSETS / "guest/init", rootfs / GUEST_INIT.lstrip("/"))
    # The DHCP client of ip=dhcp (addressing=dhcp), beside the init that runs it.
    _install(ASSETS / "guest/dhcp-client", rootfs / GUEST_DHCP_CLIENT.lstrip("/"))
    # Mount points of the two layers, so the init-bottom script never writes to make them.
    for d in ("ro", "rw"):
        (rootfs / d).mkdir(exist_ok=True)
    systemd_dir = rootfs / "lib/systemd/system"
    if (rootfs / "lib/systemd/systemd").exists():
        _install(ASSETS / f"guest/{GUEST_UNIT}", systemd_dir / GUEST_UNIT, 0o644)
        wants = rootfs / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / GUEST_UNIT
        if not link.is_symlink():
            link.symlink_to(f"/lib/systemd/system/{GUEST_UNIT}")
        # The journal in RAM: on the writable disk it would be most of what a guest writes.
        journald = rootfs / "etc/systemd/journald.conf.d"
        journald.mkdir(parents=True, exist_ok=True)
        (journald / "scalelab.conf").write_text("[Journal]\nStorage=volatile\n")
        # The distribution's sshd would take port 22 with the wrong configuration (and try
        # to make host keys): our unit starts the one sshd a guest has.
        for unit in ("ssh.service", "ssh.socket"):
            masked = rootfs / "etc/systemd/system" / unit
            if not masked.is_symlink():
                masked.symlink_to("/dev/null")


def add_vm_parts(rootfs: Path, scratch: Path, progress: Progress, log: Path) -> None:
    """Install the overlay-root initramfs and the lean init into ``rootfs``; put the kernel
    and the initramfs into ``scratch`` (beside ``base.img``)."""
    version = kernel_version(rootfs)
    install_guest_files(rootfs)
    # The kernel's postinst may already have built an initramfs (with every module):
    # replace it with ours.
    initrd = rootfs / "boot" / f"initrd.img-{version}"
    initrd.unlink(missing_ok=True)
    progress(f"building the initramfs for {version}")
    stream(
        chroot_script(rootfs, f"update-initramfs -c -k {version}"),
        progress,
        "update-initramfs",
        log,
    )
    if not initrd.is_file():
        raise UserError(f"image build: update-initramfs made no {initrd.name} (log: {log})")
    shutil.copyfile(rootfs / "boot" / f"vmlinuz-{version}", scratch / KERNEL_FILE)
    shutil.copyfile(initrd, scratch / INITRD_FILE)
    for f in (KERNEL_FILE, INITRD_FILE):
        (scratch / f).chmod(0o444)
    info = {
        "kernel_version": version,
        "kernel_bytes": (scratch / KERNEL_FILE).stat().st_size,
        "initrd_bytes": (scratch / INITRD_FILE).stat().st_size,
        "init": GUEST_INIT,
        "systemd": (rootfs / "lib/systemd/systemd").exists(),
    }
    (scratch / VM_INFO).write_text(json.dumps(info, indent=2) + "\n")


def vm_info(image_dir: Path) -> dict[str, object]:
    """What ``add_vm_parts`` recorded about an image's kernel (empty if nothing)."""
    try:
        data = json.loads((image_dir / VM_INFO).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
