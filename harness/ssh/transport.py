"""How a guest connection's bytes travel: the socket paramiko reads through and the client
transport's cipher preference, both tuned for fan-outs of many short commands."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping
from typing import Any

import paramiko

from harness.backends.base import Guest, Jump

# paramiko logs every failed handshake attempt with a traceback; retries are expected during
# a boot storm, and failures are reported by the harness with their class instead.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

#: How much a connection reads from its socket at once.
READ_AHEAD = 65536

#: Ciphers put first in every client transport. With an AEAD cipher the packet's tag is
#: checked inside ``cryptography``; with a separate MAC paramiko compares it byte by byte in
#: Python (``util.constant_time_bytes_eq``) and builds an ``hmac`` object per packet, which
#: profiled at about a fifth of the client's CPU in a fan-out of short commands.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

#: Key exchanges put first.  OpenSSH computes X25519 with its own portable C code, but
#: NIST P-256 with OpenSSL's optimised code: measured in a guest's cgroup, a handshake cost
#: its sshd 16.4 ms of CPU with curve25519 and 14.7 ms with P-256 (median of 15 each,
#: same guest, same run), which in a boot storm of 64 guests on 2 cores is wall time.
#: The client side (``cryptography``, OpenSSL for both) is the same either way.
PREFERRED_KEX = ("ecdh-sha2-nistp256",)


class TimedSocket:
    """A guest connection's socket as paramiko sees it: notes when the server's first bytes
    (the banner) arrive, and reads ahead.

    paramiko reads each packet with two or three ``recv`` calls (its first block, then the
    rest); serving them from one larger read halves the system calls under a fan-out of
    short commands (−6 to −9 % client CPU per command in paired runs). Only the transport's
    own thread reads, so the buffer needs no lock.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self.first_byte_ns: int | None = None

    def recv(self, n: int) -> bytes:
        if self._buf:
            data, self._buf = self._buf[:n], self._buf[n:]
            return data
        data = self._sock.recv(max(n, READ_AHEAD))
        if data and self.first_byte_ns is None:
            self.first_byte_ns = time.time_ns()
        if len(data) > n:
            data, self._buf = data[:n], data[n:]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


#: How often an idle connection's reader thread wakes up to check it is still wanted
#: (paramiko's own default is 0.1 s), while it connects: paramiko checks its handshake and
#: banner deadlines only when a read times out, so they need this granularity.
IDLE_WAKEUP = 1.0
#: The same once the connection is authenticated (:func:`settle`).  Every guest has a
#: reader thread; at 4096 guests a wake-up a second each is 4096 GIL hand-offs a second,
#: each contended by thousands of threads: the harness's CPU per guest at bring-up grew with
#: N (14.6 ms at 64, 185 ms at 4096, 40 % of the host in system time) and a fan-out over
#: exec channels at 4096 stalled.  Nothing else needs the wake-ups: closing a connection
#: closes its socket, which ends the read at once, and keepalives are not used.
SETTLED_WAKEUP = 30.0


def settle(client: paramiko.SSHClient) -> None:
    """``client`` is authenticated: its reader thread may sleep ``SETTLED_WAKEUP``."""
    transport = client.get_transport()
    if transport is not None:
        transport.sock.settimeout(SETTLED_WAKEUP)


class _Transport(paramiko.Transport):
    _active_check_timeout = IDLE_WAKEUP


def client_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A client transport that prefers AEAD ciphers and the P-256 key exchange (the others
    stay allowed, after them).

    Given to ``SSHClient.connect`` as its ``transport_factory``.
    """
    transport = _Transport(sock, **kwargs)
    opts = transport.get_security_options()
    first = [c for c in PREFERRED_CIPHERS if c in opts.ciphers]
    opts.ciphers = tuple(first + [c for c in opts.ciphers if c not in first])
    kex = [k for k in PREFERRED_KEX if k in opts.kex]
    opts.kex = tuple(kex + [k for k in opts.kex if k not in kex])
    return transport


def open_socket(guest: Guest, timeout: float,
                jump_clients: Mapping[Jump, paramiko.SSHClient]) -> Any:
    """A byte stream to the guest's sshd: a TCP socket, or a channel through its jump host."""
    if guest.jump is not None:
        transport = jump_clients[guest.jump].get_transport()
        assert transport is not None
        chan = transport.open_channel(
            "direct-tcpip", (guest.host, guest.port), ("127.0.0.1", 0), timeout=timeout
        )
        return chan
    sock = socket.create_connection((guest.host, guest.port), timeout=timeout)
    # SSH sends many small packets and waits for the answers: without TCP_NODELAY, Nagle's
    # algorithm meets the peer's delayed ACK and each exchange waits ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
