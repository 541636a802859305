"""Small SSH endpoints on loopback for tests that need no guest: a real SSH server (paramiko's
server side: key exchange, host key, public-key authentication, exec) and the ways a port can
fail to be one (nobody listening, silent, closing at once).

Each runs in daemon threads of the test process and is closed by its context manager.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.exec_done = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "root" and key.asbytes() == self.client_key.asbytes()
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        # Every command "prints" the guest's name, as `cat /etc/hostname` would on a guest.
        def answer() -> None:
            with contextlib.suppress(OSError, EOFError):  # the client may have gone already
                channel.sendall(b"g000\n")
                channel.send_exit_status(0)
                channel.close()

        threading.Thread(target=answer, daemon=True).start()
        return True


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    return srv


@contextlib.contextmanager
def _accepting(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """Accept connections on a fresh loopback port, each handed to ``handle(conn)``."""
    srv = _listener()
    stop = threading.Event()
    conns: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conns.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        th.join(2)
        srv.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()


@contextlib.contextmanager
def ssh_server(host_key: paramiko.PKey, client_key: paramiko.PKey) -> Iterator[int]:
    """A real SSH server offering ``host_key`` and letting in root with ``client_key``."""
    transports: list[paramiko.Transport] = []
    # Channels are held here: paramiko closes a Channel that nothing refers to any more, and
    # the transport itself only keeps weak references.
    channels: list[paramiko.Channel] = []

    def serve(conn: socket.socket) -> None:
        t = paramiko.Transport(conn)
        transports.append(t)
        t.add_server_key(host_key)
        with contextlib.suppress(Exception):  # a client that gives up is not our failure
            t.start_server(server=_Server(client_key))
            while t.is_active():
                chan = t.accept(timeout=1)
                if chan is not None:
                    channels.append(chan)

    try:
        with _accepting(serve) as port:
            yield port
    finally:
        for t in transports:
            t.close()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """Accepts connections and never says a word (a hung sshd)."""
    with _accepting(lambda conn: None) as port:
        yield port


@contextlib.contextmanager
def closing_port(after_banner: bool = False) -> Iterator[int]:
    """Accepts connections and closes them: at once (sshd refusing to start a session), or
    after sending an SSH identification (a guest dying in the middle of the handshake)."""
    def close(conn: socket.socket) -> None:
        if after_banner:
            with contextlib.suppress(OSError):
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                # Until the client's own identification and key exchange have arrived: closing
                # on unread data makes the kernel answer with a reset, as for a killed sshd.
                conn.settimeout(5)
                conn.recv(1)
        conn.close()

    with _accepting(close) as port:
        yield port


def free_port() -> int:
    """A loopback port nobody listens on (bound a moment ago, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
