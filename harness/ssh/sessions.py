"""Which guest connection has a live executor session, and commands and uploads through it,
or through exec channels and SFTP on a guest that cannot run the executor (no python3).

A connection's session is opened the first time it is needed (the readiness wait's first
command opens it) and kept with the connection; one that died is opened again next time,
and a guest that could not start it is remembered as such and is not asked again.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import paramiko

from harness.plumbing.result import CommandResult
from harness.ssh.commands import run_on
from harness.ssh.executor import NoExecutor, Pending, Session, run_request
from harness.ssh.failures import Failure, GuestError

#: Seconds the executor gets to start when the command has no timeout of its own.
START_TIMEOUT = 60.0

_guard = threading.Lock()
_state: weakref.WeakKeyDictionary[paramiko.SSHClient, Session | str] = (
    weakref.WeakKeyDictionary())
_locks: weakref.WeakKeyDictionary[paramiko.SSHClient, threading.Lock] = (
    weakref.WeakKeyDictionary())


def session_of(client: paramiko.SSHClient) -> Session | None:
    """``client``'s live session, if it has one (never opens one)."""
    with _guard:
        st = _state.get(client)
    return st if isinstance(st, Session) and st.dead is None else None


def no_executor(client: paramiko.SSHClient) -> str | None:
    """Why ``client``'s guest runs commands over exec channels, when it does."""
    with _guard:
        st = _state.get(client)
    return st if isinstance(st, str) else None


def decline(client: paramiko.SSHClient, reason: str) -> None:
    """``client``'s guest is to run commands over exec channels (``reason`` says why), even
    though it could run the executor: the lab decided so before it started."""
    with _guard:
        _state[client] = reason


def ensure_session(client: paramiko.SSHClient, guest: str,
                   timeout: float | None = None) -> Session | None:
    """``client``'s session, opened now if it has none; None when the guest cannot run the
    executor.  Raises ``GuestError`` when the guest did not answer."""
    with _guard:
        lock = _locks.setdefault(client, threading.Lock())
    with lock:
        with _guard:
            st = _state.get(client)
        if isinstance(st, str):
            return None
        if isinstance(st, Session) and st.dead is None:
            return st
        try:
            session = Session.open(client, guest, START_TIMEOUT if timeout is None else timeout)
        except NoExecutor as exc:
            with _guard:
                _state[client] = str(exc)
            return None
        with _guard:
            _state[client] = session
        return session


def run_command(client: paramiko.SSHClient, command: str, *, timeout: float | None = None,
                stdin: bytes | None = None, guest: str = "") -> CommandResult:
    """One command on ``client``'s guest: through its session, else an exec channel."""
    session = ensure_session(client, guest, timeout)
    if session is None:
        return run_on(client, command, timeout=timeout, stdin=stdin, guest=guest)
    return session.run(command, timeout=timeout, stdin=stdin)


def start_all(clients: Mapping[str, paramiko.SSHClient], names: Iterable[str], command: str,
              timeout: float | None) -> dict[str, Pending]:
    """Send ``command`` at once to every guest of ``names`` with a live session (the rest
    are left to the caller): one frame each, from this thread, no thread per guest."""
    out: dict[str, Pending] = {}
    request = run_request(command, timeout=timeout)
    for name in names:
        session = session_of(clients[name])
        if session is None:
            continue
        try:
            out[name] = session.start(command, timeout=timeout, request=request)
        except GuestError:
            continue  # died just now: the caller's slow path opens a new one or says why
    return out


def put_tree(client: paramiko.SSHClient, local: Path, remote: str, mode: int | None,
             guest: str = "") -> str:
    """``local`` (a file, or a tree) to ``remote`` on the guest; each file keeps its own
    mode, except a single file given ``mode``.  All of it in flight at once on the session;
    over SFTP when the guest has none."""
    session = ensure_session(client, guest)
    if session is None:
        with client.open_sftp() as sftp:
            _sftp_put(sftp, local, remote, mode)
        return remote
    futures = [session.put(dest, data, m) for dest, data, m in _entries(local, remote, mode)]
    deadline = time.monotonic() + START_TIMEOUT
    for fut in futures:
        meta = fut.result(max(0.0, deadline - time.monotonic())).meta
        if meta.get("error"):
            raise GuestError(guest, Failure.ERROR, f"upload to {remote} failed: {meta['error']}")
    return remote


def _entries(local: Path, remote: str, mode: int | None
             ) -> Iterator[tuple[str, bytes | None, int | None]]:
    """(path, contents or None for a directory, mode) for ``local`` and all under it."""
    if local.is_dir():
        yield remote, None, None
        for child in sorted(local.iterdir()):
            yield from _entries(child, f"{remote}/{child.name}", None)
        return
    yield remote, local.read_bytes(), mode if mode is not None else local.stat().st_mode & 0o777


def _sftp_put(sftp: paramiko.SFTPClient, local: Path, remote: str, mode: int | None) -> None:
    if local.is_dir():
        with contextlib.suppress(OSError):  # already there: uploads are idempotent
            sftp.mkdir(remote)
        for child in sorted(local.iterdir()):
            _sftp_put(sftp, child, f"{remote}/{child.name}", None)
        return
    sftp.put(str(local), remote)
    sftp.chmod(remote, mode if mode is not None else (local.stat().st_mode & 0o777))
