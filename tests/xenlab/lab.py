"""Boot the xenlab: a real Xen hypervisor with a Debian dom0, nested under QEMU TCG.

    with running_lab(image) as lab:          # image: a scalelab VM image, placed on dom0
        lab.backend_url()                    # xen://root@127.0.0.1:PORT?known_hosts=...&key=...
        lab.ssh("xl list")

QEMU loads Xen as a multiboot kernel (``-kernel xen``) with the dom0 kernel and initramfs as
modules (``-initrd "vmlinuz ARGS,initrd.img"``), ``-cpu qemu64`` (``max`` crashes dom0).  Disks:
``vda`` the cached dom0 image (``snapshot=on``: the cache is never written), ``vdb`` a seed disk
made for this boot: dom0's SSH host key (generated here, so it is pinned before boot), the
test's authorized key, the bridge address and the scalelab image bundle.  User networking
with ``restrict=on``: dom0 reaches nothing; only its port 22 is forwarded, to a loopback port.

The scalelab image goes in on the seed disk rather than over SSH: packing it with
``mkfs.ext4 -d`` takes about a second, while SFTP into a dom0 whose ciphers run under TCG
would take far longer.  The backend finds it in its dom0 cache (by bundle id) and uploads
nothing.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from harness.backends.xen import BUNDLE_FILES, bundle_id, bundle_sources, known_hosts_line
from harness.identity import KeyPair
from harness.image.cache import Image, resolve
from harness.plumbing.result import CommandResult
from harness.ssh import load_private_key, run_on

from .image import ROOT, Dom0Image, build_dom0_image

BRIDGE = "xenbr0"
#: dom0's address on the guest bridge; the tests run the harness with --subnet=BRIDGE_SUBNET.
BRIDGE_CIDR = "10.213.254.1/24"
BRIDGE_SUBNET = "10.213.254.0/24"
XEN_ARGS = ("console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 "
            "loglvl=all guest_loglvl=all noreboot")
DOM0_ARGS = "root=/dev/vda ro console=hvc0 net.ifnames=0 init=/sbin/xenlab-init"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class XenLab:
    """A running nested Xen: how to reach dom0 and what it took."""

    dom0: Dom0Image
    workdir: Path
    port: int
    key_path: Path
    known_hosts: Path
    console_log: Path
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"
    user: str = "root"
    timings: dict[str, float] = field(default_factory=dict)
    _client: paramiko.SSHClient | None = None

    def backend_url(self, **extra: str) -> str:
        opts = {"known_hosts": str(self.known_hosts), "key": str(self.key_path), **extra}
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"xen://{self.user}@{self.host}:{self.port}?{query}"

    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            self._client = _connect(self)
        return self._client

    def ssh(self, command: str, timeout: float = 120.0) -> CommandResult:
        return run_on(self.client(), command, timeout=timeout, guest="dom0")

    def console(self, tail: int = 60) -> str:
        try:
            lines = self.console_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _connect(lab: XenLab, timeout: float = 10.0) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(lab.host, port=lab.port, username=lab.user,
                   pkey=load_private_key(lab.key_path.read_text()), look_for_keys=False,
                   allow_agent=False, timeout=timeout, banner_timeout=timeout,
                   auth_timeout=timeout)
    return client


def _seed_disk(workdir: Path, host_key: KeyPair, client_key: KeyPair,
               images: list[Image]) -> Path:
    """The per-boot seed disk: keys, lab.env and the image bundles (hard links, no copy)."""
    tree = workdir / "seed"
    tree.mkdir()
    (tree / "ssh_host_ed25519_key").write_text(host_key.private_openssh)
    (tree / "ssh_host_ed25519_key").chmod(0o600)
    (tree / "ssh_host_ed25519_key.pub").write_text(host_key.public_openssh + "\n")
    (tree / "authorized_keys").write_text(client_key.public_openssh + "\n")
    (tree / "lab.env").write_text(f"BRIDGE={BRIDGE}\nBRIDGE_CIDR={BRIDGE_CIDR}\n")
    total = 0
    for image in images:
        bdir = tree / "cache" / bundle_id(image)
        bdir.mkdir(parents=True)
        for name, src in bundle_sources(image).items():
            try:
                os.link(src, bdir / name)
            except OSError:
                shutil.copy2(src, bdir / name)
            total += src.stat().st_size
        (bdir / "complete").write_text("")
    disk = workdir / "seed.img"
    size = int(total * 1.1) + (32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "xenlab-seed", "-O", "^has_journal",
                    "-d", str(tree), str(disk), f"{size // 1024}k"], check=True)
    shutil.rmtree(tree)
    return disk


def qemu_argv(dom0: Dom0Image, seed: Path, port: int, console: Path,
              memory_mib: int = 3072, cpus: int = 2) -> list[str]:
    initrd = f"{dom0.kernel} {DOM0_ARGS},{dom0.initrd}"
    return [
        "qemu-system-x86_64",
        "-machine", "pc,accel=tcg", "-cpu", "qemu64", "-smp", str(cpus), "-m", str(memory_mib),
        "-display", "none", "-monitor", "none", "-serial", f"file:{console}", "-no-reboot",
        "-kernel", str(dom0.xen), "-append", XEN_ARGS, "-initrd", initrd,
        "-drive", f"file={dom0.disk},if=virtio,format=raw,snapshot=on",
        "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]


def start_lab(images: list[Image], *, boot_timeout: float = 300.0,
              root: Path = ROOT) -> XenLab:
    """Build (or find) the dom0 image, boot it and wait until ``xl`` answers over SSH."""
    if shutil.which("qemu-system-x86_64") is None:
        raise RuntimeError("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    t0 = time.monotonic()
    dom0 = build_dom0_image(root)
    timings = {"dom0_image_s": time.monotonic() - t0}
    root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lab-", dir=root))
    try:
        host_key = KeyPair.generate("root@xenlab-dom0")
        client_key = KeyPair.generate("xenlab-test")
        key_path = workdir / "id_ed25519"
        key_path.write_text(client_key.private_openssh)
        key_path.chmod(0o600)
        t1 = time.monotonic()
        seed = _seed_disk(workdir, host_key, client_key, images)
        timings["seed_disk_s"] = time.monotonic() - t1
        port = free_port()
        known = workdir / "known_hosts"
        pkey = load_private_key(host_key.private_openssh)
        known.write_text(known_hosts_line("127.0.0.1", port, pkey) + "\n")
        console = workdir / "console.log"
        argv = qemu_argv(dom0, seed, port, console)
        (workdir / "qemu.cmd").write_text(shlex.join(argv) + "\n")
        t2 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=(workdir / "qemu.err").open("wb"),
                                start_new_session=True)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    lab = XenLab(dom0, workdir, port, key_path, known, console, proc, timings=timings)
    try:
        _wait_ready(lab, t2, boot_timeout)
    except BaseException:
        lab.close()
        raise
    lab.timings["dom0_boot_s"] = time.monotonic() - t2
    return lab


def _wait_ready(lab: XenLab, t_start: float, timeout: float) -> None:
    deadline = t_start + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if lab.proc.poll() is not None:
            err = (lab.workdir / "qemu.err").read_text(errors="replace").strip()
            raise RuntimeError(f"qemu exited ({lab.proc.returncode}) {err}\n"
                               f"console:\n{lab.console()}")
        if "xenlab-init: ready" in lab.console(tail=400):
            try:
                res = lab.ssh("xl info | grep -E '^(xen_version|free_memory)'", timeout=60)
                if res.exit_status == 0:
                    return
                last = RuntimeError(res.stderr)
            except Exception as exc:  # not up yet
                last = exc
                lab._client = None
        time.sleep(1.0)
    raise TimeoutError(f"dom0 not ready after {timeout:.0f}s (last: {last})\n"
                       f"console:\n{lab.console()}")


@contextlib.contextmanager
def pinned_image(image: Image, root: Path = ROOT) -> Iterator[Image]:
    """``image`` hard-linked into a directory of its own for the lab's lifetime: a rebuild
    of the shared image cache (``--force``) meanwhile cannot change what the lab runs."""
    root.mkdir(parents=True, exist_ok=True)
    snap = Path(tempfile.mkdtemp(prefix=f"image-{image.key}-", dir=root))
    try:
        for f in image.dir.iterdir():
            if f.is_file():
                try:
                    os.link(f, snap / f.name)
                except OSError:
                    shutil.copy2(f, snap / f.name)
        pinned = resolve(str(snap))
        pinned.check()
        yield pinned
    finally:
        shutil.rmtree(snap, ignore_errors=True)


@contextlib.contextmanager
def running_lab(images: list[Image] | None = None, *,
                boot_timeout: float = 300.0) -> Iterator[XenLab]:
    """A booted xenlab, torn down (QEMU stopped, files removed) on exit."""
    lab = start_lab(images or [], boot_timeout=boot_timeout)
    try:
        yield lab
    finally:
        lab.close()


__all__ = ["BRIDGE_SUBNET", "BUNDLE_FILES", "XenLab", "pinned_image", "running_lab",
           "start_lab"]
