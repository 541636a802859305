"""What crosses between the client and its shards besides plain data: uploads, guests and
functions shipped by value (GroupResult and GuestError pickle as they are).  No Dask here;
both sides import this module."""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.base import Guest, Jump
from harness.identity import GuestSpec, KeyPair, identity_row


class ShardError(RuntimeError):
    """An unexpected failure inside a shard, carried back as text (never an OSError, which
    the client would take for a lost connection to the lab host)."""


# -- uploads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A file or a directory tree read on the client, written out again on a lab host.

    ``entries`` are (path relative to the top, bytes or None for a directory, mode).
    """

    name: str
    is_dir: bool
    entries: tuple[tuple[str, bytes | None, int], ...] = field(repr=False)

    @classmethod
    def read(cls, local: Path) -> Upload:
        if not local.is_dir():
            return cls(local.name, False, (("", local.read_bytes(), local.stat().st_mode & 0o777),))
        entries: list[tuple[str, bytes | None, int]] = []
        for path in sorted(local.rglob("*")):
            rel = str(path.relative_to(local))
            mode = path.stat().st_mode & 0o777
            entries.append((rel, None if path.is_dir() else path.read_bytes(), mode))
        return cls(local.name, True, tuple(entries))

    def write(self, into: Path) -> Path:
        """Recreate the file or tree under ``into``; returns its top path."""
        top = into / self.name
        if not self.is_dir:
            _, data, mode = self.entries[0]
            top.write_bytes(data or b"")
            top.chmod(mode)
            return top
        top.mkdir()
        for rel, data, mode in self.entries:
            path = top / rel
            if data is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            path.chmod(mode)
        return top


# -- guests --------------------------------------------------------------------------------


def guest_to_wire(g: Guest) -> dict[str, Any]:
    """A guest as plain data: everything but the private half of its host key."""
    s = g.spec
    return {
        "run_id": s.run_id, "index": s.index, "name": s.name, "mac": s.mac, "ip": str(s.ip),
        "gateway": str(s.gateway), "machine_id": s.machine_id,
        "host_key": s.host_key.public_openssh, "memory": s.memory, "cpus": s.cpus,
        "host": g.host, "port": g.port, "lab_host": g.lab_host,
    }


def guest_from_wire(d: dict[str, Any], jump: Jump | None = None) -> Guest:
    spec = GuestSpec(
        run_id=d["run_id"], index=int(d["index"]), name=d["name"], mac=d["mac"],
        ip=ipaddress.IPv4Interface(d["ip"]), gateway=ipaddress.IPv4Address(d["gateway"]),
        machine_id=d["machine_id"], host_key=KeyPair("", d["host_key"]),
        memory=d["memory"], cpus=d["cpus"],
    )
    return Guest(spec, d["host"], int(d["port"]), jump=jump, lab_host=d["lab_host"])


def identity_of(spec: GuestSpec, lab_host: str) -> dict[str, str]:
    """What the cross-shard identity preflight compares (see ``plan.check_identities``)."""
    return {**identity_row(spec), "lab_host": lab_host}


# -- functions -----------------------------------------------------------------------------


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(sorted(os.path.realpath(r) + os.sep for r in roots))


def _by_value(module_name: str, module: Any) -> bool:
    """Whether a module must travel by value: code a lab host cannot import (scenario files,
    conftest, test modules), i.e. neither harness nor anything installed."""
    if module_name == "harness" or module_name.startswith("harness."):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return not real.startswith(_installed_roots())


#: Modules already looked at by :func:`dumps_function`.
_SEEN: set[str] = set()


def dumps_function(func: Callable[..., Any]) -> bytes:
    """Pickle ``func`` with cloudpickle, shipping scenario code by value."""
    import cloudpickle  # type: ignore[import-untyped]

    for name, module in list(sys.modules.items()):
        if name in _SEEN or module is None:
            continue
        _SEEN.add(name)
        if _by_value(name, module):
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:
                continue  # a module cloudpickle cannot handle by value: leave it by name
    data: bytes = cloudpickle.dumps(func)
    return data


def loads_function(data: bytes) -> Callable[..., Any]:
    import cloudpickle

    func: Callable[..., Any] = cloudpickle.loads(data)
    return func
