"""harness.ssh parts that need no guest: the socket paramiko reads through."""

from __future__ import annotations

import socket
import time

import pytest

from harness.ssh import _READ_AHEAD, _TimedSocket


def test_reads_ahead_and_hands_out_exactly_what_is_asked() -> None:
    a, b = socket.socketpair()
    with a, b:
        timed = _TimedSocket(a)
        before = time.time_ns()
        b.sendall(b"SSH-2.0-x\r\n" + bytes(range(256)) * 10)
        assert timed.recv(11) == b"SSH-2.0-x\r\n"
        assert timed.first_byte_ns is not None and timed.first_byte_ns >= before
        first = timed.first_byte_ns
        got = b"".join(timed.recv(n) for n in (16, 1000, 1544))
        assert got == bytes(range(256)) * 10
        assert timed.first_byte_ns == first  # the banner's moment, not a later read's
        # Nothing buffered and nothing sent: the socket's own timeout, as paramiko expects.
        a.settimeout(0.05)
        with pytest.raises(TimeoutError):
            timed.recv(16)
        # More than one read-ahead arrives whole and in order.
        blob = bytes(range(251)) * (3 * _READ_AHEAD // 251)
        b.sendall(blob)
        a.settimeout(2)
        out = b""
        while len(out) < len(blob):
            out += timed.recv(4096)
        assert out == blob
        b.close()
        assert timed.recv(16) == b""  # EOF stays EOF
        assert timed.fileno() == a.fileno()  # everything else is the socket's
