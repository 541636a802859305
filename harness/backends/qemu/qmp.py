"""QMP, QEMU's JSON control socket: one connection per command (shutdown and faults are
rare, and a fresh connection cannot be left in a half-read state by an earlier one)."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

from harness.errors import LabError


class QmpError(LabError):
    """A QMP command failed or QEMU did not answer."""


def _reply(f: io.BufferedIOBase, name: str) -> dict[str, Any]:
    """The next greeting, answer or error; events (``{"event": ...}``) may come first."""
    while True:
        line = f.readline()
        if not line:
            raise QmpError(f"QMP {name}: QEMU closed the connection")
        msg = json.loads(line)
        if "QMP" in msg or "return" in msg or "error" in msg:
            return dict(msg)


def _send(f: io.BufferedIOBase, name: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
    req: dict[str, Any] = {"execute": cmd}
    if args:
        req["arguments"] = args
    f.write(json.dumps(req).encode() + b"\n")
    f.flush()
    msg = _reply(f, name)
    if "error" in msg:
        raise QmpError(f"QMP {cmd}: {msg['error'].get('desc', msg['error'])}")
    return msg.get("return")


def qmp(path: Path, command: str, timeout: float = 5.0, **arguments: Any) -> Any:
    """Run one QMP command on the unix socket ``path`` and return its ``return`` value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise QmpError(f"QMP {path.name}: {exc}") from None
        f = sock.makefile("rwb")
        try:
            _reply(f, path.name)  # the greeting
            _send(f, path.name, "qmp_capabilities")
            return _send(f, path.name, command, arguments or None)
        except (OSError, ValueError) as exc:
            raise QmpError(f"QMP {command} on {path.name}: {exc}") from None
