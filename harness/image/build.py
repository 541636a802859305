"""Build the shared base image: debootstrap a Debian root, apply the recipe, pack it as ext4.

The build happens in a scratch directory inside the cache and is renamed into place only
when complete, so a failed or interrupted build never leaves a half-built image behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.image import cache
from harness.image.commands import Progress, chroot_script, stream
from harness.image.recipe import Recipe
from harness.image.vm import add_vm_parts

#: The guest's sshd configuration, shared by every guest through the image.  Keys and the
#: authorized key live in each guest's own writable layer.  PAM is off: the guest has no
#: login sessions to set up and pam_loginuid would fail inside a namespace.
SSHD_CONFIG = """\
# scalelab guest sshd configuration (written by the image build)
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 64
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
PidFile none
"""


def host_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 ``.sources`` or ``sources.list``)."""
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    files = sorted(sources.glob("*.sources")) if sources.is_dir() else []
    for f in files:
        for block in f.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for ln in block.splitlines():
                k, _, v = ln.partition(":")
                if not ln.startswith("#") and v:
                    fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split():
                candidates += fields.get("uris", "").split()
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if m:
                candidates.append(m.group(1))
    for uri in candidates:
        if "security" not in uri and uri.startswith(("http://", "https://", "file:/")):
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def _line_progress(prefix: str) -> Progress:
    """A one-line progress display that rewrites itself on a terminal, plain lines elsewhere."""
    tty = sys.stderr.isatty()
    last = [""]

    def show(msg: str) -> None:
        msg = f"{prefix}{msg}"
        if tty:
            width = shutil.get_terminal_size().columns - 1
            sys.stderr.write("\r" + msg[:width].ljust(min(width, len(last[0]))))
            sys.stderr.flush()
        elif msg != last[0]:
            sys.stderr.write(msg + "\n")
        last[0] = msg

    return show


@contextlib.contextmanager
def _build_dir(root: Path, key: str) -> Iterator[Path]:
    """A scratch directory that is removed unless the build renames its result away."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
    try:
        yield scratch
    finally:
        _guard_mounts(scratch)  # never rm -rf through a mount
        shutil.rmtree(scratch, ignore_errors=True)


def _apply_recipe(rootfs: Path, recipe: Recipe, progress: Progress, log: Path) -> None:
    for f in recipe.files:
        dest = rootfs / f.dest.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if f.src.is_dir():
            shutil.copytree(f.src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(f.src, dest)
        if f.mode is not None:
            dest.chmod(f.mode)
    env_prefix = "export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8; "
    for i, step in enumerate(recipe.steps, 1):
        stream(chroot_script(rootfs, env_prefix + step), progress, f"step {i}", log)


def _scrub(rootfs: Path) -> None:
    """Remove what must differ per guest or must not be shared: host keys, machine-id..."""
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (rootfs / "var/lib/dbus/machine-id").unlink()
    (rootfs / "etc/hostname").write_text("scalelab\n")
    # The authorized_keys slot: the harness writes the run's client key into each guest's
    # writable layer, so the shared image stays read-only and holds no key.
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (rootfs / "etc/scalelab").mkdir(exist_ok=True)
    (rootfs / "etc/scalelab/sshd_config").write_text(SSHD_CONFIG)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for lists in (rootfs / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    with contextlib.suppress(FileNotFoundError):
        (rootfs / "usr/sbin/policy-rc.d").unlink()


def _guard_mounts(rootfs: Path) -> None:
    """Refuse to pack (and later rm -rf) a root that still has something mounted in it."""
    prefix = str(rootfs.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        inside = [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]
    if inside:
        raise RuntimeError(f"mounts left inside the image root: {', '.join(inside)}")


def _du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise UserError(
            f"missing tool(s) {', '.join(missing)}: apt-get install debootstrap e2fsprogs"
        )


def _debootstrap(recipe: Recipe, rootfs: Path, debs: Path, progress: Progress, log: Path) -> None:
    """Install the recipe's suite and packages into ``rootfs``."""
    stream(
        [
            # A private mount namespace: debootstrap mounts /proc and /sys in the target,
            # and if it dies those mounts must not outlive it (or be rm -rf'ed through).
            "unshare", "--mount", "--propagation", "private",
            "debootstrap",
            f"--variant={recipe.variant}",
            # Downloaded .debs are kept between builds: a rebuild fetches nothing.
            f"--cache-dir={debs}",
            f"--include={','.join(recipe.all_packages())}",
            recipe.suite,
            str(rootfs),
            str(recipe.mirror),
        ],
        progress,
        "debootstrap",
        log,
    )


def _customise(rootfs: Path, scratch: Path, recipe: Recipe, progress: Progress, log: Path) -> None:
    """Turn the debootstrapped root into the shared guest root: the recipe's files and
    steps, the VM parts if asked for, then everything per-guest scrubbed out."""
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")  # no daemon starts inside the build
    policy.chmod(0o755)
    _apply_recipe(rootfs, recipe, progress, log)
    if recipe.vm:
        add_vm_parts(rootfs, scratch, progress, log)
    _scrub(rootfs)
    _guard_mounts(rootfs)
    (rootfs / "etc/scalelab/services.json").write_text(json.dumps(list(recipe.services)))


def _pack_ext4(rootfs: Path, img: Path, progress: Progress, log: Path) -> int:
    """Pack ``rootfs`` into the read-only ext4 image ``img``; returns the rootfs size."""
    size = _du_bytes(rootfs)
    # Room for the filesystem's own metadata; the image is never written after this.
    img_size = int(size * 1.15) + (64 << 20)
    progress(f"packing {size >> 20} MiB into ext4")
    stream(
        [
            "mkfs.ext4", "-q", "-F", "-L", "scalelab", "-m", "0", "-O", "^has_journal",
            "-d", str(rootfs), str(img), str(img_size // 1024) + "k",
        ],
        progress,
        "mkfs.ext4",
        log,
    )
    shutil.rmtree(rootfs)
    img.chmod(0o444)
    return size


def _manifest(key: str, img: Path, rootfs_bytes: int, recipe: Recipe, t0: float,
              progress: Progress) -> dict[str, Any]:
    """What the cache records about a built image (``cache.load`` checks the digest)."""
    progress("computing digest")
    digest = sha256_file(img)
    st = img.stat()
    return {
        "key": key,
        "digest": digest,
        "size": st.st_size,
        "mtime": int(st.st_mtime),
        "rootfs_bytes": rootfs_bytes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t0, 1),
        "recipe": recipe.describe(),
    }


def _publish(scratch: Path, final: Path) -> None:
    """Rename the finished build into place, replacing a previous image of the same key."""
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)
    scratch.mkdir()  # so the build dir's cleanup finds something to remove


def _build_log(root: Path | None, key: str) -> Path:
    """An empty log for this build, outside the scratch dir: it must outlive a failed build."""
    logs = (root or cache.cache_dir()) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{key}.log"
    log.write_text("")
    return log


def _check_can_build() -> None:
    if os.geteuid() != 0:
        raise UserError("building an image needs root (debootstrap, chroot): run it as root")
    require_tools("debootstrap", "mkfs.ext4", "unshare")


def build(
    recipe: Recipe,
    *,
    force: bool = False,
    root: Path | None = None,
    progress: Progress | None = None,
) -> tuple[cache.Image, bool]:
    """Build (or find in the cache) the image of ``recipe``. Returns (image, built_now)."""
    if recipe.mirror is None:
        recipe = recipe.with_mirror(host_mirror())
    key = recipe.key()
    existing = cache.load(key, root)
    if existing is not None and not force:
        return existing, False
    _check_can_build()
    progress = progress or _line_progress(f"image {key}: ")
    images = cache.images_root(root)
    t0 = time.monotonic()
    debs = (root or cache.cache_dir()) / "debs" / recipe.suite
    debs.mkdir(parents=True, exist_ok=True)
    log = _build_log(root, key)
    with _build_dir(images, key) as scratch:
        rootfs = scratch / "rootfs"
        _debootstrap(recipe, rootfs, debs, progress, log)
        _customise(rootfs, scratch, recipe, progress, log)
        img = scratch / cache.IMAGE_FILE
        size = _pack_ext4(rootfs, img, progress, log)
        manifest = _manifest(key, img, size, recipe, t0, progress)
        (scratch / cache.MANIFEST).write_text(json.dumps(manifest, indent=2))
        _publish(scratch, images / key)
    sys.stderr.write("\n" if sys.stderr.isatty() else "")
    image = cache.load(key, root)
    assert image is not None
    return image, True
