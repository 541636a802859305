"""The client side of a persistent session: one long-lived SSH channel per guest to the
executor of :mod:`harness.ssh.executor_guest`, many requests in flight on it at once.

A :class:`Session` is opened on a guest's authenticated connection (its pinned host key was
checked when the connection was made): one ``exec`` channel starts ``python3`` with a few
bytes of bootstrap that read the executor's source from the channel.  From then on a
command costs one frame each way on that channel; no channel, sshd session or shell is made
for it.  Replies are read by one thread for every session of the process (:class:`_Hub`,
waiting on the channels' poll descriptors), so a fan-out over N guests needs no thread per
guest.  A session whose executor exits fails what is in flight at once (``lost`` when the
connection went with it, ``error`` otherwise); nothing waits for a reply that cannot come.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import marshal
import selectors
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from harness.plumbing.result import CommandResult
from harness.ssh.commands import MAX_OUTPUT, capped_text
from harness.ssh.executor_wire import CHUNK, Frames, encode_request, frame
from harness.ssh.failures import Failure, GuestError

#: The executor's two sources, run in this order in one namespace (no NUL in either).
_SOURCES = [(Path(__file__).with_name(f)).read_bytes()
            for f in ("executor_wire.py", "executor_guest.py")]
#: The executor compiled here: a guest whose Python has the same bytecode (its
#: ``cache_tag``, say ``cpython-311``) runs it as it is, saving the ~20 ms its compilation
#: costs at every start; another compiles the sources sent with it.
_CODE = marshal.dumps(tuple(compile(src, "scalelab-executor", "exec") for src in _SOURCES))
EXECUTOR_BYTES = _CODE + b"\0".join(_SOURCES)

#: The command the session's channel runs: ``python3`` reading exactly the executor (code
#: and source) from its stdin and running it (stdin and stdout are the channel from then
#: on).  ``-I -S``: no user site, no ``site`` import, nothing from the guest's environment.
BOOTSTRAP = (
    "python3 -I -S -c 'import os,sys,marshal\ns=b\"\"\n"
    f"while len(s)<{len(EXECUTOR_BYTES)}:s+=os.read(0,{len(EXECUTOR_BYTES)}-len(s))\n"
    f"for c in (marshal.loads(s[:{len(_CODE)}]) "
    f"if sys.implementation.cache_tag==\"{sys.implementation.cache_tag}\" else "
    f"[compile(t,\"scalelab-executor\",\"exec\") for t in s[{len(_CODE)}:].split(b\"\\0\")]):"
    "exec(c)'"
)

#: A guest-side deadline is the client's plus this: the client gives up first and says
#: ``timeout``; the guest's own deadline only matters when the client has gone.
_GUEST_GRACE = 1.0


class NoExecutor(Exception):
    """The guest cannot run the executor (no python3, say): use exec channels instead."""


@dataclass
class Reply:
    meta: dict[str, Any]
    payload: bytes


class _Hub:
    """One thread reading every session's channel: frames in, futures resolved."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, session: Session) -> None:
        fd = session.chan.fileno()
        with self._lock:
            if fd in self._sel.get_map():  # a number reused after a closed channel
                self._sel.unregister(fd)
            self._sel.register(fd, selectors.EVENT_READ, session)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="executor-hub",
                                                daemon=True)
                self._thread.start()
        session.readable()  # what arrived before the registration

    def remove(self, session: Session) -> None:
        with self._lock:
            key = self._sel.get_map().get(session.fd)
            if key is not None and key.data is session:
                self._sel.unregister(session.fd)

    def _loop(self) -> None:
        sel = self._sel
        while True:
            if not sel.get_map():  # epoll_wait on nothing would block past the next add
                time.sleep(0.05)
                continue
            for key, _ in sel.select(1.0):
                session: Session = key.data
                try:
                    session.readable()
                except Exception as exc:  # a broken stream ends its session, not the hub
                    session.die(f"unreadable reply: {exc}")


_HUB = _Hub()


class Session:
    """A guest's executor: requests sent from any thread, replies read by the hub."""

    def __init__(self, chan: paramiko.Channel, guest: str, info: Mapping[str, Any]) -> None:
        self.chan, self.guest, self.info = chan, guest, dict(info)
        self.fd = chan.fileno()
        self._frames = Frames(json.loads)
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Reply]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stderr = b""
        self.dead: GuestError | None = None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, client: paramiko.SSHClient, guest: str, timeout: float) -> Session:
        """Start the executor on ``client``'s guest; :class:`NoExecutor` when it cannot run
        there, ``GuestError`` (``timeout``, ``lost``) when the guest did not answer."""
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise GuestError(guest, Failure.LOST, "connection is closed")
        chan = transport.open_session(timeout=timeout)
        try:
            chan.settimeout(timeout)
            chan.exec_command(BOOTSTRAP)
            with contextlib.suppress(OSError):  # ended already (no python3): _hello says so
                chan.sendall(EXECUTOR_BYTES)
            hello = cls._hello(chan, guest)
        except BaseException:
            chan.close()
            raise
        chan.settimeout(None)
        session = cls(chan, guest, hello)
        _HUB.add(session)
        return session

    @staticmethod
    def _hello(chan: paramiko.Channel, guest: str) -> dict[str, Any]:
        frames, said = Frames(json.loads), b""
        while True:
            try:
                data = chan.recv(CHUNK)
            except TimeoutError as exc:
                raise GuestError(guest, Failure.TIMEOUT, "the executor did not start") from exc
            if not data:  # the bootstrap ended: no python3, or not ours to run
                while chan.recv_stderr_ready():
                    said += chan.recv_stderr(CHUNK)
                status = chan.recv_exit_status()
                why = said.decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise NoExecutor(f"exit status {status}: {why[0][:200]}")
            try:
                got = frames.feed(data)
            except ValueError as exc:  # not our executor answering
                raise NoExecutor(f"unexpected answer: {data[:60]!r}") from exc
            for rid, meta, _ in got:
                if rid == 0 and meta.get("hello") == 1:
                    return meta

    # -- requests ------------------------------------------------------------------------

    def submit(self, meta: dict[str, Any] | bytes, payload: bytes = b""
               ) -> tuple[int, Future[Reply]]:
        if not isinstance(meta, bytes):
            meta = encode_request(meta)
        fut: Future[Reply] = Future()
        with self._lock:
            if self.dead is not None:
                raise self.dead
            rid = next(self._ids)
            self._pending[rid] = fut
        try:
            with self._send_lock:
                self.chan.sendall(frame(rid, meta, payload))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.die(f"sending failed: {exc}")
            raise self.dead or GuestError(self.guest, Failure.LOST, str(exc)) from exc
        return rid, fut

    def start(self, command: str, *, timeout: float | None = None, stdin: bytes | None = None,
              env: Mapping[str, str] | None = None, cwd: str | None = None,
              request: bytes | None = None) -> Pending:
        """Send one command; :meth:`Pending.result` waits for it.  ``request``: what
        :func:`run_request` made of the same arguments (a fan-out makes it once)."""
        meta = request or run_request(command, timeout=timeout, env=env, cwd=cwd)
        sent_ns = time.time_ns()
        rid, fut = self.submit(meta, stdin or b"")
        return Pending(self, rid, fut, command, timeout, sent_ns)

    def run(self, command: str, *, timeout: float | None = None, stdin: bytes | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None) -> CommandResult:
        return self.start(command, timeout=timeout, stdin=stdin, env=env, cwd=cwd).result()

    def put(self, remote: str, data: bytes | None, mode: int | None,
            timeout: float = 300.0) -> Future[Reply]:
        """Write ``data`` to ``remote`` (``None``: make the directory), then set ``mode``."""
        meta = {"op": "put", "path": remote, "dir": data is None, "mode": mode}
        return self.submit(meta, data or b"")[1]

    def kill(self, rid: int) -> None:
        """Kill request ``rid``'s process group (the client gave up on it)."""
        if self.dead is None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException), self._send_lock:
                self.chan.sendall(frame(0, encode_request({"op": "kill", "target": rid})))

    # -- replies (the hub's thread) ------------------------------------------------------

    def readable(self) -> None:
        chan = self.chan
        while chan.recv_ready():
            for rid, meta, payload in self._frames.feed(chan.recv(CHUNK)):
                with self._lock:
                    fut = self._pending.pop(rid, None)
                if fut is not None:
                    fut.set_result(Reply(meta, payload))
        while chan.recv_stderr_ready():  # the executor's own complaints, for its obituary
            self._stderr = (self._stderr + chan.recv_stderr(CHUNK))[-2000:]
        if (chan.eof_received or chan.closed) and not chan.recv_ready():
            self.die("the executor exited")

    def die(self, why: str) -> None:
        """Fail everything in flight; later requests fail at once."""
        _HUB.remove(self)
        transport = self.chan.get_transport()
        gone = transport is None or not transport.is_active()
        said = self._stderr.decode(errors="replace").strip().splitlines()[-1:]
        err = GuestError(self.guest, Failure.LOST if gone else Failure.ERROR,
                         ("the connection was lost" if gone else why)
                         + (f" ({said[0][:200]})" if said else ""))
        with self._lock:
            if self.dead is None:
                self.dead = err
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(err)
        with contextlib.suppress(Exception):  # a channel of a dead transport
            self.chan.close()  # and its poll descriptors with it

    def close(self) -> None:
        self.die("the session was closed")


def run_request(command: str, *, timeout: float | None = None,
                env: Mapping[str, str] | None = None, cwd: str | None = None) -> bytes:
    """The encoded meta of a ``run`` request."""
    return encode_request({
        "op": "run", "shell": command, "cap": MAX_OUTPUT, "env": dict(env or {}), "cwd": cwd,
        "timeout": None if timeout is None else timeout + _GUEST_GRACE,
    })


@dataclass
class Pending:
    """A command sent on a session, its reply not yet taken."""

    session: Session
    rid: int
    fut: Future[Reply]
    command: str
    timeout: float | None
    #: When the request left (this host's clock): the row's start.
    sent_ns: int = 0

    def result(self, deadline: float | None = None) -> CommandResult:
        """The command's result; ``deadline`` (monotonic) overrides its own timeout."""
        guest = self.session.guest
        wait = self.timeout if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            reply = self.fut.result(wait)
        except FutureTimeout as exc:
            self.session.kill(self.rid)
            raise GuestError(guest, Failure.TIMEOUT,
                             f"{self.command!r} did not finish in {self.timeout}s") from exc
        meta = reply.meta
        if meta.get("timed_out"):
            raise GuestError(guest, Failure.TIMEOUT,
                             f"{self.command!r} did not finish in {self.timeout}s")
        if meta.get("error"):
            raise GuestError(guest, Failure.ERROR, f"the executor refused it: {meta['error']}")
        n_out = int(meta["out"])
        dropped = meta.get("dropped") or [0, 0]
        out = capped_text(reply.payload[:n_out], int(dropped[0]))
        err = capped_text(reply.payload[n_out:], int(dropped[1]))
        # The duration as the guest measured it (monotonic there, no transport in it), laid
        # on this host's clock from when the request left: a VM's clock may be off by a
        # second (TCG, an RTC read at boot), and rows must line up with fault bands and
        # samples, which are all on this host's clock.
        took = max(0, int(meta["end"]) - int(meta["start"]))
        start = self.sent_ns or int(meta["start"])
        return CommandResult(guest, self.command, int(meta["status"]), out, err,
                             start, start + took)

