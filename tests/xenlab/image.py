"""The xenlab dom0 disk image: Debian with Xen's tools, its kernel and a lean init.

Built with debootstrap (minbase plus what dom0 needs) and packed with ``mkfs.ext4 -d``; the
hypervisor, dom0 kernel and initramfs are taken out of the same root so they always match.
Cached under ``/var/cache/scalelab/xenlab/dom0-<key>/`` by a hash of the recipe (packages,
mirror, init script, sshd config); the slow debootstrap stage is cached on its own so a change
of the init script only repacks.  Nothing of a particular boot lives in the image: host key,
authorized key and bridge address come from a seed disk made per boot (see ``lab.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.image.build import host_mirror
from harness.image.commands import chroot_script

ROOT = Path("/var/cache/scalelab/xenlab")
BUILDER_VERSION = 1
SUITE = "bookworm"
PACKAGES = (
    "linux-image-amd64",  # the generic kernel: the cloud one lacks CONFIG_XEN_DOM0
    "initramfs-tools",
    "kmod",
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "openssh-server",
    "iproute2",
    "e2fsprogs",
    "gzip",
    "dnsmasq-base",  # addressing=dhcp: the domUs' leases on the bridge
)
INIT = Path(__file__).with_name("dom0-init.sh")
SSHD_CONFIG = """\
# xenlab dom0 sshd: root by key only; TCP forwarding on (dom0 is the guests' jump host)
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
AllowTcpForwarding yes
MaxSessions 256
MaxStartups 100:30:200
PrintMotd no
Subsystem sftp internal-sftp
PidFile /run/sshd.pid
"""


@dataclass(frozen=True)
class Dom0Image:
    """A built dom0: disk image, hypervisor (uncompressed, for QEMU's multiboot loader),
    dom0 kernel and initramfs."""

    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "dom0.img"

    @property
    def xen(self) -> Path:
        return self.dir / "xen"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def manifest(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.dir / "manifest.json").read_text())
        return data


def _key(parts: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_key(mirror: str) -> str:
    return _key({"v": BUILDER_VERSION, "suite": SUITE, "packages": PACKAGES, "mirror": mirror})


#: A small dom0 initramfs: only what mounts the root (virtio disk, ext4).  Debian's default
#: (MODULES=most, 35 MB) takes about 10 s just to unpack under TCG.
INITRAMFS_CONF = "MODULES=list\nCOMPRESS=gzip\nRESUME=none\n"
INITRAMFS_MODULES = "virtio_pci\nvirtio_blk\next4\n"


def image_key(mirror: str) -> str:
    return _key({"rootfs": rootfs_key(mirror), "init": INIT.read_text(), "sshd": SSHD_CONFIG,
                 "initramfs": [INITRAMFS_CONF, INITRAMFS_MODULES]})


def _log(msg: str) -> None:
    print(f"xenlab: {msg}", flush=True)


def _debootstrap(mirror: str, root: Path) -> Path:
    """The debootstrapped root (cached: about 1.5 min the first time)."""
    stage = root / f"rootfs-{rootfs_key(mirror)}"
    rootfs = stage / "rootfs"
    if (stage / "complete").exists():
        return rootfs
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    _log(f"debootstrap {SUITE} with {len(PACKAGES)} packages into {stage}")
    t0 = time.monotonic()
    with (stage / "debootstrap.log").open("wb") as log:
        rc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "debootstrap",
             "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
            stdout=log, stderr=subprocess.STDOUT, check=False,
        ).returncode
    if rc != 0:
        tail = (stage / "debootstrap.log").read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"debootstrap failed ({rc}): {' | '.join(tail)}")
    (stage / "complete").write_text(f"{time.monotonic() - t0:.1f}\n")
    return rootfs


def _one(pattern: str, boot: Path) -> Path:
    found = sorted(boot.glob(pattern))
    if not found:
        raise RuntimeError(f"{pattern} not found in {boot}")
    return found[-1]


def build_dom0_image(root: Path = ROOT, mirror: str | None = None) -> Dom0Image:
    """The cached dom0 image, built now if missing."""
    mirror = mirror or host_mirror()
    key = image_key(mirror)
    final = root / f"dom0-{key}"
    if (final / "manifest.json").exists():
        return Dom0Image(final)
    t0 = time.monotonic()
    rootfs = _debootstrap(mirror, root)
    t_boot = time.monotonic() - t0
    scratch = Path(tempfile.mkdtemp(prefix=f".dom0-{key}-", dir=root))
    try:
        boot = rootfs / "boot"
        with gzip.open(_one("xen-4.17-amd64.gz", boot), "rb") as src, \
                (scratch / "xen").open("wb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copy2(_one("vmlinuz-*", boot), scratch / "vmlinuz")
        tree = scratch / "tree"
        _log("copying the root and adding the init script")
        subprocess.run(["cp", "-a", str(rootfs), str(tree)], check=True)
        _customise(tree)
        _log("building a small dom0 initramfs")
        version = _one("vmlinuz-*", tree / "boot").name.removeprefix("vmlinuz-")
        subprocess.run(chroot_script(tree, f"update-initramfs -u -k {version}"),
                       check=True, capture_output=True)
        shutil.copy2(tree / "boot" / f"initrd.img-{version}", scratch / "initrd.img")
        size = int(subprocess.run(["du", "-sb", str(tree)], capture_output=True, text=True,
                                  check=True).stdout.split()[0])
        img_size = int(size * 1.2) + (768 << 20)  # room for the runs' writable disks
        _log(f"packing {size >> 20} MiB into ext4")
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "xenlab-dom0", "-d", str(tree),
                        str(scratch / "dom0.img"), f"{img_size // 1024}k"], check=True)
        shutil.rmtree(tree)
        (scratch / "dom0.img").chmod(0o444)
        manifest = {
            "key": key, "mirror": mirror, "packages": list(PACKAGES),
            "rootfs_bytes": size, "debootstrap_seconds": round(t_boot, 1),
            "build_seconds": round(time.monotonic() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        scratch.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for old in root.glob("dom0-*"):
        if old != final:  # an older recipe's image: nothing uses it any more
            shutil.rmtree(old, ignore_errors=True)
    _log(f"dom0 image {key} built in {time.monotonic() - t0:.0f}s")
    return Dom0Image(final)


def _customise(tree: Path) -> None:
    init = tree / "sbin/xenlab-init"
    shutil.copy(INIT, init)
    init.chmod(0o755)
    (tree / "etc/ssh/xenlab_sshd_config").write_text(SSHD_CONFIG)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each boot gets its own, from the seed disk
    (tree / "etc/hostname").write_text("xenlab-dom0\n")
    (tree / "etc/initramfs-tools/conf.d/xenlab.conf").write_text(INITRAMFS_CONF)
    (tree / "etc/initramfs-tools/modules").write_text(INITRAMFS_MODULES)
    for p in (tree / "boot").glob("*.efi"):
        p.unlink()
    for p in (tree / "boot").glob("*.dpkg-bak"):
        p.unlink()
    for p in (tree / "boot").glob("*.new"):
        p.unlink()
    shutil.rmtree(tree / "var/cache/apt/archives", ignore_errors=True)
    (tree / "var/cache/apt/archives/partial").mkdir(parents=True)
