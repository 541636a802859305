"""Keys in memory: the run's client key as paramiko takes it, and every guest's pinned host
key under the names paramiko and OpenSSH look it up by."""

from __future__ import annotations

import io
from collections.abc import Iterable

import paramiko

from harness.backends.base import Guest


def load_private_key(text: str) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(text))


def known_hosts_lines(guests: Iterable[Guest]) -> list[str]:
    """One ``known_hosts`` line per guest, its key generated on the host before it booted."""
    lines = []
    for g in guests:
        kt, blob = g.spec.host_key.public_openssh.split()[:2]
        if g.port == 22:
            names = [g.name, g.host]
        else:  # how paramiko and OpenSSH name a host on another port
            names = [f"[{g.host}]:{g.port}", g.name, f"[{g.name}]:{g.port}"]
        lines.append(f"{','.join(names)} {kt} {blob}")
    return lines


def host_keys_for(guests: Iterable[Guest]) -> paramiko.HostKeys:
    """The same pins as :func:`known_hosts_lines`, parsed the way paramiko would read them."""
    hk = paramiko.HostKeys()
    for line in known_hosts_lines(guests):
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        assert entry is not None
        for name in entry.hostnames:
            hk.add(name, entry.key.get_name(), entry.key)
    return hk
