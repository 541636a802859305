"""The VM parts of the image, read without booting: kernel, initramfs contents, guest init."""

from __future__ import annotations

import gzip
import stat
import subprocess
from pathlib import Path

import pytest

from harness.image.cache import Image
from harness.image.vm import ASSETS, GUEST_INIT, vm_info

pytestmark = pytest.mark.vm


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name → (mode, content) of a (gzip-compressed) newc cpio archive."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    files: dict[str, tuple[int, bytes]] = {}
    i = 0
    while i + 110 <= len(data):
        if data[i:i + 6] != b"070701":
            raise ValueError(f"not a newc archive at offset {i}")
        fields = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[i + 110:i + 110 + namesize - 1].decode()
        i = (i + 110 + namesize + 3) & ~3
        body = data[i:i + size]
        i = (i + size + 3) & ~3
        if name == "TRAILER!!!":
            break
        files[name] = (mode, body)
    return files


@pytest.fixture(scope="module")
def initrd(vm_image: Image) -> dict[str, tuple[int, bytes]]:
    return read_newc(vm_image.initrd.read_bytes())


def debugfs(image: Path, request: str) -> str:
    out = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                         text=True, check=True)
    return out.stdout


def test_kernel_and_initramfs_beside_the_image(vm_image: Image) -> None:
    assert vm_image.vm
    assert vm_image.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    info = vm_info(vm_image.dir)
    assert str(info["kernel_version"]).endswith("-cloud-amd64")
    assert info["initrd_bytes"] == vm_image.initrd.stat().st_size


def test_initramfs_has_the_overlay_hook(initrd: dict[str, tuple[int, bytes]]) -> None:
    script = "scripts/init-bottom/scalelab-overlayroot"
    mode, body = initrd[script]
    assert stat.S_IMODE(mode) & 0o111
    assert body == (ASSETS / script).read_bytes()
    assert b"/scripts/init-bottom/scalelab-overlayroot" in initrd["scripts/init-bottom/ORDER"][1]
    coldplug = "scripts/init-top/scalelab-coldplug"
    assert initrd[coldplug][1] == (ASSETS / coldplug).read_bytes()
    assert f"/{coldplug}".encode() in initrd["scripts/init-top/ORDER"][1]
    names = {Path(n).name.replace("-", "_") for n in initrd}
    for ko in ("overlay", "virtio_pci", "virtio_blk", "virtio_net", "virtio_rng",
               "xen_blkfront", "xen_netfront"):
        assert f"{ko}.ko" in names, ko
    # No udev: coldplug loads the drivers, the overlay script moves /dev.
    assert "udevadm" not in names and "systemd-udevd" not in names
    assert "scripts/init-top/udev" not in initrd and "scripts/init-bottom/udev" not in initrd
    assert "busybox" in names
    # MODULES=list keeps it small: a few drivers, not the kernel's whole module tree.
    assert sum(1 for n in initrd if n.endswith(".ko")) < 40


def test_image_carries_the_guest_init(vm_image: Image) -> None:
    """The installed init is the package's current one (rebuild with --force if not)."""
    shipped = (ASSETS / "guest/init").read_text()
    assert debugfs(vm_image.path, f"cat {GUEST_INIT}") == shipped
    st = debugfs(vm_image.path, f"stat {GUEST_INIT}")
    assert "Type: regular" in st and "Mode:  0755" in st
    for d in ("/ro", "/rw"):
        assert "Type: directory" in debugfs(vm_image.path, f"stat {d}")
    # For systemd boots: the distribution's sshd stays masked (the guest has one sshd), and
    # the journal stays in RAM, off the small writable disk.
    assert "Type: symlink" in debugfs(vm_image.path, "stat /etc/systemd/system/ssh.service")
    journald = debugfs(vm_image.path, "cat /etc/systemd/journald.conf.d/scalelab.conf")
    assert "Storage=volatile" in journald
