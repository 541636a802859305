"""Running one command on a guest over its open connection, with bounded output."""

from __future__ import annotations

import time

import paramiko

from harness.plumbing.result import CommandResult
from harness.ssh.failures import Failure, GuestError

#: Output beyond this many bytes per stream is dropped (and said so): an agent that prints
#: gigabytes must not take the harness's memory with it.
MAX_OUTPUT = 16 << 20

#: While stdout is quiet, stderr is looked at this often, so that a chatty stderr cannot
#: fill the channel window while we wait on stdout.
_STDERR_POLL = 0.1

#: Bytes asked of the channel per read: more than one packet (32 KiB), so that a busy
#: stream is drained in few calls.
_CHUNK = 65536


class _Capped:
    """One stream's bytes up to ``cap``, counting what is dropped beyond it."""

    def __init__(self, cap: int = MAX_OUTPUT) -> None:
        self.cap, self.size, self.dropped = cap, 0, 0
        self.chunks: list[bytes] = []

    def add(self, data: bytes) -> None:
        keep = data[: max(0, self.cap - self.size)]
        if keep:
            self.chunks.append(keep)
            self.size += len(keep)
        self.dropped += len(data) - len(keep)

    def text(self) -> str:
        return capped_text(b"".join(self.chunks), self.dropped)


def capped_text(data: bytes, dropped: int) -> str:
    """A stream's kept bytes as text, saying how many more were dropped."""
    text = data.decode(errors="replace")
    if dropped:
        text += f"\n[scalelab: {dropped} more bytes of output dropped]\n"
    return text


def _drain(chan: paramiko.Channel, timeout: float | None) -> tuple[str, str]:
    """stdout and stderr to EOF, read by the calling thread (no helper thread per command)."""
    out, err = _Capped(), _Capped()
    deadline = None if timeout is None else time.monotonic() + timeout
    chan.settimeout(_STDERR_POLL)
    while True:
        try:
            data: bytes | None = chan.recv(_CHUNK)
        except TimeoutError:
            data = None
        while chan.recv_stderr_ready():
            err.add(chan.recv_stderr(_CHUNK))
        if data == b"":  # EOF: paramiko closes the stderr buffer at the same moment
            break
        if data:
            out.add(data)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
    while data := chan.recv_stderr(_CHUNK):  # what is left is already buffered
        err.add(data)
    return out.text(), err.text()


def run_on(
    client: paramiko.SSHClient,
    command: str,
    *,
    timeout: float | None = None,
    stdin: bytes | None = None,
    guest: str = "",
) -> CommandResult:
    """Run one command over an open connection (one channel, no pty)."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise GuestError(guest, Failure.LOST, "connection is closed")
    start = time.time_ns()
    # The end is the start plus a monotonic duration: a wall clock stepped mid-command
    # must not give a negative or inflated duration.
    mono = time.perf_counter_ns()
    chan = transport.open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = _drain(chan, timeout)
        status = chan.recv_exit_status()
    except TimeoutError as exc:
        raise GuestError(guest, Failure.TIMEOUT,
                         f"{command!r} did not finish in {timeout}s") from exc
    finally:
        chan.close()
    end = start + (time.perf_counter_ns() - mono)
    return CommandResult(guest, command, status, out, err, start, end)
