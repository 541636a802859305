"""The guest side of a persistent session: a small executor that runs in the guest for the
whole run, reading requests from its stdin and writing replies to its stdout (one SSH
channel), and runs each command as a plain child process: no new channel, no sshd session,
no login shell per command.  Requests run concurrently; replies come in the order commands
finish, each with its request's id.

Its code (and this module's and :mod:`harness.ssh.executor_wire`'s sources, for a guest
whose Python has other bytecode) is sent over the channel by :mod:`harness.ssh.executor`
and started with ``python3 -c``: stdlib only, nothing written to the guest.
"""

from __future__ import annotations

import os
import pwd
import select
import sys
import time

# What the executor imports is what every guest pays at each start, 64 at once in a boot
# storm: no ``json`` (its ``re`` and ``enum`` cost ~25 ms), ``typing``, ``selectors``,
# ``contextlib`` or ``signal`` (an ``enum`` again), only modules built into the
# interpreter or nearly.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any
else:
    import _signal as signal
if __name__ != "__main__":
    # On the client (tests, the protocol's one definition). In the guest these names are
    # already defined: executor_wire's source runs first, in the same namespace.
    from harness.ssh.executor_wire import (
        CHUNK,
        FOUND,
        Frames,
        encode_reply,
        frame,
        plain_argv,
        which,
    )

class Job:
    """One running command: its child, its output so far (capped) and its deadline."""

    def __init__(self, rid: int, cap: int, deadline: float | None) -> None:
        self.rid, self.cap, self.deadline = rid, cap, deadline
        self.pid = 0
        self.out, self.err = bytearray(), bytearray()
        self.dropped = [0, 0]
        self.open_fds: set[int] = set()
        self.status: int | None = None
        self.timed_out = False
        self.start = time.time_ns()
        self.mono = time.monotonic_ns()
        self.stdin = memoryview(b"")
        self.exit_fd = -1  # its pidfd, while one is watched

    def add(self, stream: int, data: bytes) -> None:
        buf = self.out if stream == 1 else self.err
        keep = data[: max(0, self.cap - len(buf))]
        buf += keep
        self.dropped[stream - 1] += len(data) - len(keep)

    def reply(self, error: str | None = None) -> bytes:
        end = self.start + (time.monotonic_ns() - self.mono)
        meta = {"status": self.status, "out": len(self.out), "err": len(self.err),
                "dropped": self.dropped, "start": self.start, "end": end,
                "timed_out": self.timed_out, "error": error}
        return frame(self.rid, encode_reply(meta), bytes(self.out) + bytes(self.err))


class _Key:
    __slots__ = ("data", "fd")

    def __init__(self, fd: int, data: str) -> None:
        self.fd, self.data = fd, data


class Poller:
    """The part of ``selectors`` the loop uses, over ``select.poll`` (no import cost)."""

    def __init__(self) -> None:
        self.poll = select.poll()
        self.keys: dict[int, _Key] = {}

    def register(self, fd: int, events: int, data: str) -> None:
        self.keys[fd] = _Key(fd, data)
        self.poll.register(fd, events)

    def unregister(self, fd: int) -> None:
        del self.keys[fd]
        self.poll.unregister(fd)

    def select(self, timeout: float | None) -> list[tuple[_Key, int]]:
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return [(self.keys[fd], ev) for fd, ev in self.poll.poll(ms) if fd in self.keys]


READ = select.POLLIN | select.POLLHUP | select.POLLERR
WRITE = select.POLLOUT | select.POLLERR


class Executor:
    """The loop: requests from ``rfd``, children's pipes and their exits, replies to ``wfd``."""

    def __init__(self, rfd: int = 0, wfd: int = 1) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.sel = Poller()
        self.frames = Frames()
        self.jobs: dict[int, Job] = {}  # request id → job
        self.exits: dict[int, Job] = {}  # pidfd → the job whose exit it tells
        #: Jobs whose exit is polled for (their output closed before they exited, on a
        #: kernel without pidfds).
        self.polling: set[Job] = set()
        self.closing: list[int] = []
        self.fds: dict[int, tuple[Job, int]] = {}  # fd → (job, 0 stdin / 1 out / 2 err)
        me = pwd.getpwuid(os.getuid())
        self.shell = me.pw_shell or "/bin/sh"
        self.home = os.environ.get("HOME") or me.pw_dir or "/"
        self.env = dict(os.environ)
        self.env.pop("_", None)  # the bootstrap's shell set it to python3
        self.cwd = self.home if os.path.isdir(self.home) else "/"
        os.chdir(self.cwd)
        self.null = os.open(os.devnull, os.O_RDONLY)  # every stdin-less command's stdin
        # No SIGCHLD handler: a command's exit is reaped when its output has closed (it
        # has exited by then, but for a moment); a pidfd, or a poll, tells it otherwise.
        self.sel.register(rfd, READ, "in")

    def send(self, data: bytes) -> None:
        if self.wfd < 0:  # the client has hung up: nobody to tell
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def serve(self) -> None:
        self.send(frame(0, encode_reply(
            {"hello": 1, "pid": os.getpid(), "python": sys.version.split()[0]})))
        while True:
            deadlines = [j.deadline for j in self.jobs.values() if j.deadline and not j.timed_out]
            wait = None if not deadlines else max(0.0, min(deadlines) - time.monotonic())
            if self.polling:
                wait = 0.01 if wait is None else min(wait, 0.01)
            for key, events in self.sel.select(wait):
                if key.data == "in":
                    data = os.read(self.rfd, CHUNK)
                    if not data:
                        self.hang_up()
                        return
                    for rid, meta, payload in self.frames.feed(data):
                        self.request(rid, meta, payload)
                elif key.data == "exit":
                    self.exited(key.fd)
                else:
                    self.pipe_event(key.fd, events)
            for fd in self.closing:
                os.close(fd)
            self.closing.clear()
            for job in [j for j in self.polling if self.try_wait(j)]:
                self.polling.discard(job)
                self.maybe_done(job)
            self.expire()

    def request(self, rid: int, meta: dict[str, Any], payload: bytes) -> None:
        op = meta.get("op")
        try:
            if op == "run":
                self.start(rid, meta, payload)
            elif op == "kill":
                job = self.jobs.get(int(meta["target"]))
                if job is not None:
                    self.kill(job)
            elif op == "put":
                self.send(frame(rid, encode_reply(self.put(meta, payload))))
            else:
                self.send(frame(rid, encode_reply({"error": f"unknown op {op!r}"})))
        except Exception as exc:  # a bad request fails itself, never the executor
            self.send(frame(rid, encode_reply({"error": f"{type(exc).__name__}: {exc}"})))

    def put(self, meta: dict[str, Any], payload: bytes) -> dict[str, Any]:
        path = str(meta["path"])
        if meta.get("dir"):
            os.makedirs(path, exist_ok=True)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        if meta.get("mode") is not None:
            os.chmod(path, int(meta["mode"]))
        return {"status": 0}

    def start(self, rid: int, meta: dict[str, Any], payload: bytes) -> None:
        timeout = meta.get("timeout")
        job = Job(rid, int(meta.get("cap", 16 << 20)),
                  None if timeout is None else time.monotonic() + float(timeout))
        env = self.env
        if meta.get("env"):
            env = dict(self.env)
            env.update(meta["env"])
        argv = meta.get("argv")
        if argv is None:
            argv = plain_argv(str(meta["shell"]), env.get("PATH", ""))
            if argv is None:
                argv = [self.shell, "-c", str(meta["shell"])]
        cwd = meta.get("cwd") or self.cwd
        if cwd != self.cwd and not os.path.isdir(cwd):
            raise NotADirectoryError(f"no directory {cwd}")  # the request's error, not 127
        try:
            job.pid = self.spawn(argv, env, cwd, job, payload)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and meta.get("argv") is None:
                FOUND.clear()  # a program found before has gone: let the shell say so
            job.status = 127 if isinstance(exc, FileNotFoundError) else 126
            job.err += f"scalelab executor: {argv[0]}: {exc.strerror or exc}\n".encode()
            self.send(job.reply())
            return
        self.jobs[rid] = job

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, job: Job,
              payload: bytes) -> int:
        """Start ``argv`` in a session of its own, its output on pipes watched by the loop."""
        if cwd != self.cwd:  # one thread: safe to chdir around the spawn
            os.chdir(cwd)
        out, err = os.pipe(), os.pipe()  # non-inheritable until dup2'd onto 1 and 2
        stdin = os.pipe() if payload else (self.null, -1)
        try:
            exe = argv[0] if "/" in argv[0] else (which(argv[0], env.get("PATH", ""))
                                                  or argv[0])
            pid = os.posix_spawn(
                exe, argv, env, setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                file_actions=[(os.POSIX_SPAWN_DUP2, stdin[0], 0),
                              (os.POSIX_SPAWN_DUP2, out[1], 1),
                              (os.POSIX_SPAWN_DUP2, err[1], 2)])
        except OSError:
            for fd in (out[0], err[0], stdin[1]):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out[1], err[1], stdin[0]):
                if fd != self.null:
                    os.close(fd)
            if cwd != self.cwd:
                os.chdir(self.cwd)
        self.watch(job, out[0], 1, READ)
        self.watch(job, err[0], 2, READ)
        if payload:
            job.stdin = memoryview(payload)
            os.set_blocking(stdin[1], False)
            self.watch(job, stdin[1], 0, WRITE)
        return pid

    def watch(self, job: Job, fd: int, stream: int, events: int) -> None:
        job.open_fds.add(fd)
        self.fds[fd] = (job, stream)
        self.sel.register(fd, events, "pipe")

    def unwatch(self, fd: int) -> None:
        job, _ = self.fds.pop(fd)
        job.open_fds.discard(fd)
        self.sel.unregister(fd)
        # Closed after the batch of events: a number freed now and reused by a spawn in
        # the same batch would take a later event meant for the old descriptor.
        self.closing.append(fd)

    def pipe_event(self, fd: int, events: int) -> None:
        if fd not in self.fds:  # unwatched by an earlier event of the same batch
            return
        job, stream = self.fds[fd]
        if stream == 0:
            try:
                job.stdin = job.stdin[os.write(fd, job.stdin):]
            except BrokenPipeError:
                job.stdin = memoryview(b"")
            if not job.stdin:
                self.unwatch(fd)
        else:
            data = os.read(fd, CHUNK)
            if data:
                job.add(stream, data)
            else:
                self.unwatch(fd)
        self.maybe_done(job)

    def try_wait(self, job: Job) -> bool:
        """Reap ``job``'s process if it has exited."""
        if job.status is not None:
            return True
        pid, status = os.waitpid(job.pid, os.WNOHANG)
        if pid == 0:
            return False
        code = os.waitstatus_to_exitcode(status)
        # Killed by a signal: what a shell would say (128 + the signal's number).
        job.status = code if code >= 0 else 128 - code
        return True

    def watch_exit(self, job: Job) -> None:
        if job.exit_fd >= 0 or job in self.polling:
            return
        try:
            fd = os.pidfd_open(job.pid)
        except (AttributeError, OSError):  # Python < 3.9 or Linux < 5.3
            self.polling.add(job)
            return
        self.exits[fd], job.exit_fd = job, fd
        self.sel.register(fd, READ, "exit")

    def exited(self, fd: int) -> None:
        job = self.exits.get(fd)
        if job is not None:  # else: its job finished earlier in the same batch
            self.unwatch_exit(job)
            if self.try_wait(job):
                self.maybe_done(job)

    def unwatch_exit(self, job: Job) -> None:
        self.polling.discard(job)
        if job.exit_fd >= 0:
            del self.exits[job.exit_fd]
            self.sel.unregister(job.exit_fd)
            self.closing.append(job.exit_fd)
            job.exit_fd = -1

    def maybe_done(self, job: Job) -> None:
        if job.open_fds and not job.timed_out:
            return
        if job.status is None and not self.try_wait(job):
            self.watch_exit(job)  # output closed, process not yet gone
            return
        for fd in list(job.open_fds):  # a timed-out job's escaped children may hold them
            self.unwatch(fd)
        self.unwatch_exit(job)
        del self.jobs[job.rid]
        self.send(job.reply())

    def kill(self, job: Job) -> None:
        job.timed_out = True
        try:  # noqa: SIM105 - contextlib is an import every start would pay
            os.killpg(job.pid, signal.SIGKILL)
        except OSError:  # gone already
            pass
        self.maybe_done(job)

    def expire(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.deadline is not None and now >= job.deadline and not job.timed_out:
                self.kill(job)

    def hang_up(self) -> None:
        """The client is gone: what it started and is still waiting for goes too."""
        self.wfd = -1
        for job in list(self.jobs.values()):
            self.kill(job)


if __name__ == "__main__":
    Executor().serve()
