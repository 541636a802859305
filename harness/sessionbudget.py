"""Whether a lab's guests each keep a persistent executor session (``--sessions``).

``on``: every guest's connection carries its executor (harness/ssh/executor.py); ``off``:
commands go over one SSH exec channel each; ``auto`` (the default): on, unless the guests'
processes live in this host's memory (netns) and N of them with their executors would not
fit in what the host has available.  An executor is a Python process per guest: measured
at 256 netns guests, the host's available memory fell by 5.9 MiB per guest with sessions, of
which 2.8 MiB were the executor's private pages (3.2 MiB without) — 4096 guests with
sessions need about 24 GiB, more than this 24 GiB machine has once its kernel and page
cache are counted.  Decided once per lab, before its guests start, never half-way.
"""

from __future__ import annotations

from pathlib import Path

#: Host memory one netns guest costs with its executor session (measured, see above;
#: rounded up).
WITH_SESSION = 6 * 2**20
#: The share of the host's available memory a lab may plan to use.
HEADROOM = 0.85

MODES = ("auto", "on", "off")


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The kernel's estimate of memory available to new work (``MemAvailable``)."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def sessions_off_reason(mode: str, n: int, in_host_memory: bool,
                        available: int) -> str | None:
    """Why the lab's ``n`` guests run without executor sessions, or None when they keep
    one each.  ``in_host_memory``: the backend's guests are processes of this host."""
    if mode == "on":
        return None
    if mode == "off":
        return "persistent sessions are off (--sessions=off)"
    need = n * WITH_SESSION
    if not in_host_memory or need <= HEADROOM * available:
        return None
    gib = 2**30
    return (f"{n} guests with a persistent session each need about {need / gib:.1f} GiB and "
            f"this host has {available / gib:.1f} GiB available: commands go over one SSH "
            f"channel each (--sessions=on to insist)")
