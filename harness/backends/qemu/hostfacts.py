"""What the qemu backend reads from this host: free memory, QEMU's version, a process's
resident memory, the blocks used in an ext4 image, a free loopback port."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

from harness.backends.qemu.argv import QEMU


def mem_available() -> int:
    """The host's MemAvailable in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int | None:
    """The resident memory of process ``pid``, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def boot_id() -> str:
    """This boot of the host ("" if unknown): what a per-boot cache is keyed on."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"version (\S+)", out.stdout)
    return m.group(1) if m else "unknown"


def ext4_used_bytes(image: Path) -> int | None:
    """Bytes of allocated blocks in an ext4 image, from its group descriptors (the per-group
    free counts are written back with the bitmaps; the superblock's total may lag)."""
    out = subprocess.run(["dumpe2fs", str(image)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    return parse_dumpe2fs_used(out.stdout)


def parse_dumpe2fs_used(text: str) -> int | None:
    """Used bytes from ``dumpe2fs`` output: block count minus every group's free blocks."""
    head = dict(re.findall(r"^(Block count|Block size):\s+(\d+)$", text, re.M))
    free = sum(int(n) for n in re.findall(r"^\s+(\d+) free blocks,", text, re.M))
    try:
        return (int(head["Block count"]) - free) * int(head["Block size"])
    except KeyError:
        return None


def free_port(taken: set[int]) -> int:
    """A loopback TCP port nobody listens on now (QEMU binds it a moment later), and not
    one already handed to another VM of this run that has not bound it yet."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
