"""The files that make a guest itself, written on the host before the guest starts.

Every backend puts the same tree in the guest's writable layer: the netns backend writes it
straight into the overlay's upper directory; VM backends pack it into the guest's small
writable disk (``mkfs.ext4 -d``), which the initramfs uses as the overlay's upper layer.
So a guest's host key is pinned before it boots, whatever runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from harness.errors import LabError
from harness.identity import GuestSpec


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_guest_files(spec: GuestSpec, client_public_key: str, upper: Path) -> None:
    """Write hostname, hosts, machine-id, host key, authorized key and identity under ``upper``
    (a directory standing for the guest's ``/``)."""
    etc = upper / "etc"
    (etc / "ssh").mkdir(parents=True, exist_ok=True)
    (etc / "scalelab").mkdir(exist_ok=True)
    (etc / "hostname").write_text(spec.name + "\n")
    (etc / "hosts").write_text(
        f"127.0.0.1 localhost\n{spec.address} {spec.name}\n{spec.gateway} labhost\n"
    )
    (etc / "machine-id").write_text(spec.machine_id + "\n")
    _write_private(etc / "ssh/ssh_host_ed25519_key", spec.host_key.private_openssh)
    (etc / "ssh/ssh_host_ed25519_key.pub").write_text(spec.host_key.public_openssh + "\n")
    (etc / "scalelab/guest.json").write_text(
        json.dumps(
            {
                "run_id": spec.run_id,
                "index": spec.index,
                "name": spec.name,
                "ip": str(spec.ip),
                "gateway": str(spec.gateway),
                "mac": spec.mac,
            }
        )
        + "\n"
    )
    ssh = upper / "root/.ssh"
    ssh.mkdir(parents=True, mode=0o700, exist_ok=True)
    _write_private(ssh / "authorized_keys", client_public_key + "\n")
    (upper / "run/sshd").mkdir(parents=True, exist_ok=True)


def make_guest_disk(spec: GuestSpec, client_public_key: str, path: Path, size: int) -> None:
    """The guest's writable disk: ext4 holding ``upper/`` (its identity tree, what the
    initramfs uses as the overlay's upper layer) and an empty ``work/``.

    No journal and a small inode table: the disk is thrown away with the run, and what it
    costs after boot should be the guest's own files, not ext4's bookkeeping.
    """
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=path.parent) as tmp:
        tree = Path(tmp)
        (tree / "upper").mkdir()
        (tree / "work").mkdir()
        write_guest_files(spec, client_public_key, tree / "upper")
        inodes = max(1024, size // (64 << 10))
        out = subprocess.run(
            [
                "mkfs.ext4", "-q", "-F", "-L", "scalelab-rw", "-m", "0",
                "-O", "^has_journal,^resize_inode", "-N", str(inodes),
                "-E", "root_owner=0:0", "-d", str(tree), str(path), f"{size >> 10}k",
            ],
            capture_output=True, text=True, check=False,
        )
    if out.returncode != 0:
        raise LabError(f"mkfs.ext4 for {spec.name}'s disk failed: {out.stderr.strip()}")
