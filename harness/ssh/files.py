"""Files written for a run: the client key (0600 from the start) and the ``known_hosts`` and
``ssh_config`` a person uses to log in to the guests by hand."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from harness.backends.base import Guest, Jump
from harness.identity import KeyPair
from harness.ssh.keys import known_hosts_lines


def write_client_key(state_dir: Path, key: KeyPair) -> Path:
    """The run's client key, mode 0600 from the moment it exists (never in a report)."""
    path = state_dir / "id_ed25519"
    # Created with its mode rather than chmod-ed after: no window in which the umask's
    # default lets another user read the private key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it anyway
    with os.fdopen(fd, "w") as f:
        f.write(key.private_openssh)
    (state_dir / "id_ed25519.pub").write_text(key.public_openssh + "\n")
    return path


def write_exports(run_dir: Path, labs: Sequence[tuple[Sequence[Guest], Path]]
                  ) -> tuple[Path, Path]:
    """``known_hosts`` and ``ssh_config`` so a person can ``ssh -F <run>/ssh_config g000``.

    ``labs`` holds each lab's guests with the client key that logs in to them: a run's
    files cover all its labs, each guest with its own lab's key.  A guest behind a jump host
    (xen's remote dom0, a cluster's other lab host) is reached with ``ProxyJump``; the person
    logs in to the jump host with its ``identity_file`` or else their own keys, checking its
    key against the run's file and their own.
    """
    known = run_dir / "known_hosts"
    guests = [g for lab_guests, _ in labs for g in lab_guests]
    jumps = sorted({g.jump for g in guests if g.jump is not None}, key=lambda j: (j.host, j.port))
    lines = known_hosts_lines(guests) + [j.known_hosts_line for j in jumps if j.known_hosts_line]
    known.write_text("\n".join(lines) + "\n")
    # Jump hosts first: OpenSSH takes the first value it sees of an option, so these must
    # come before "Host *" sets what every guest shares.
    cfg = ["# scalelab run: ssh -F this-file <guest> ...", ""]
    for j in jumps:
        cfg += _jump_block(j, known)
    # Each guest names its own lab's key (IdentityFile adds up across blocks, so it is
    # never in "Host *"), and only that key is offered.
    cfg += [
        "Host *",
        "    User root",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {known.resolve()}",
        "    StrictHostKeyChecking yes",
        "    GlobalKnownHostsFile /dev/null",
        "    LogLevel ERROR",
        "",
    ]
    for lab_guests, key_path in labs:
        for g in lab_guests:
            cfg += _guest_block(g, key_path)
    config = run_dir / "ssh_config"
    config.write_text("\n".join(cfg))
    return config, known


def _jump_block(j: Jump, known: Path) -> list[str]:
    lines = [f"Host {_jump_alias(j)}", f"    HostName {j.host}", f"    Port {j.port}",
             f"    User {j.user}"]
    if j.identity_file:
        lines += [f"    IdentityFile {Path(j.identity_file).expanduser().resolve()}",
                  "    IdentitiesOnly yes"]
    else:
        lines.append("    IdentitiesOnly no")
    # The person's own known_hosts too: a jump host is theirs, its key may be known there.
    lines += [f"    UserKnownHostsFile {known.resolve()} ~/.ssh/known_hosts", ""]
    return lines


def _guest_block(g: Guest, key_path: Path) -> list[str]:
    lines = [f"Host {g.name}", f"    HostName {g.host}", f"    Port {g.port}",
             f"    IdentityFile {key_path.resolve()}"]
    # known_hosts pins the key under the guest's name; OpenSSH must look it up by that name
    # whenever it would otherwise use the address or port it connects to.
    if g.port != 22 or g.host != g.spec.address or g.jump is not None:
        lines.append(f"    HostKeyAlias {g.name}")
    if g.jump is not None:
        lines.append(f"    ProxyJump {_jump_alias(g.jump)}")
    lines.append("")
    return lines


def _jump_alias(j: Jump) -> str:
    """The ``Host`` name a jump host has in the exported ``ssh_config``."""
    return f"labhost-{j.host}-{j.port}"
