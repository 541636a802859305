"""``ssh_config`` and ``known_hosts`` of a cluster lab, so a person reaches any guest with
``ssh -F <run>/ssh_config NAME``: directly when its lab host is this host, through the
lab host (``ProxyJump``, logging in there with the person's own key) otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.backends.base import Guest, Jump
from harness.ssh import known_hosts_lines, write_exports


def write_cluster_exports(run_dir: Path, guests: Sequence[Guest], key_path: Path
                          ) -> tuple[Path, Path]:
    """The run's exports; the same files as a one-host lab's when no guest needs a jump."""
    jumps = sorted({g.jump for g in guests if g.jump is not None}, key=lambda j: j.host)
    if not jumps:
        return write_exports(run_dir, guests, key_path)
    known = run_dir / "known_hosts"
    lines = known_hosts_lines(guests) + [j.known_hosts_line for j in jumps if j.known_hosts_line]
    known.write_text("\n".join(lines) + "\n")
    cfg = ["# scalelab cluster lab: ssh -F this-file <guest> ...", ""]
    # Lab hosts first: the first value of an option wins, and here the person's own key
    # (not only the run's) must be offered, with their known_hosts as well as the run's.
    for j in jumps:
        cfg += [f"Host {_alias(j)}", f"    HostName {j.host}", f"    Port {j.port}",
                f"    User {j.user}", "    IdentitiesOnly no",
                f"    UserKnownHostsFile {known.resolve()} ~/.ssh/known_hosts", ""]
    cfg += [
        "Host *",
        "    User root",
        f"    IdentityFile {key_path.resolve()}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {known.resolve()}",
        "    StrictHostKeyChecking yes",
        "    GlobalKnownHostsFile /dev/null",
        "    LogLevel ERROR",
        "",
    ]
    for g in guests:
        cfg += [f"Host {g.name}", f"    HostName {g.host}", f"    Port {g.port}",
                f"    HostKeyAlias {g.name}"]
        if g.jump is not None:
            cfg.append(f"    ProxyJump {_alias(g.jump)}")
        cfg.append("")
    config = run_dir / "ssh_config"
    config.write_text("\n".join(cfg))
    return config, known


def _alias(j: Jump) -> str:
    return f"labhost-{j.host}-{j.port}"
