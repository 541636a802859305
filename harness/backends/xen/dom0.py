"""Talking to dom0: commands and files here or over SSH (with dom0's key pinned), one
connection per dom0 and process, and recording dom0's host key on purpose."""

from __future__ import annotations

import abc
import atexit
import contextlib
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paramiko

from harness.backends.xen.options import Target
from harness.errors import LabError, UserError
from harness.image.cache import cache_dir
from harness.plumbing.result import CommandResult
from harness.ssh import GuestError, run_on

#: Seconds for a quick command on dom0 (``xl info``, ``xl list``, ``mkdir``...).
SHORT_TIMEOUT = 60.0
#: ``xl create`` of a PV domU takes ~13 s on a nested Xen under QEMU TCG.
CREATE_TIMEOUT = 300.0
#: What libxl says when a hotplug script was too slow (a loaded dom0): worth one retry.
TRANSIENT = ("because of timeout", "scripts/block failed", "unable to add disk devices",
             "unable to add vif devices", "scripts/vif-bridge failed")
#: ``CommandResult.guest`` of a command run on a remote dom0 (empty: this host).
DOM0 = "dom0"


class Dom0(abc.ABC):
    """Commands and files on dom0."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def label(self) -> str:
        return self.target.label

    @abc.abstractmethod
    def run(self, argv: Sequence[str], *, timeout: float = SHORT_TIMEOUT,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` on dom0 (no shell: every argument is passed as is)."""

    @abc.abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to dom0, keeping holes (sparse disks stay sparse)."""

    @abc.abstractmethod
    def write_text(self, remote: str, text: str) -> None:
        """Create a file on dom0 with ``text`` in it."""

    def close(self) -> None:  # noqa: B027 - nothing to drop for a local dom0
        """Drop the connection."""

    def sh(self, script: str, *args: str, timeout: float = SHORT_TIMEOUT) -> CommandResult:
        return self.run(["sh", "-c", script, "sh", *args], timeout=timeout)

    def check(self, argv: Sequence[str], what: str, *, timeout: float = SHORT_TIMEOUT) -> str:
        res = self.run(argv, timeout=timeout)
        if not res.ok:
            raise LabError(f"{what} on dom0 {self.label} failed: {res.message()}")
        return res.stdout


class LocalDom0(Dom0):
    """This host is dom0."""

    def run(self, argv: Sequence[str], *, timeout: float = SHORT_TIMEOUT,
            stdin: bytes | None = None) -> CommandResult:
        # Not plumbing's text-mode runner: stdin is bytes here, and output that is not
        # UTF-8 (a console log) must be replaced, not raise.
        command, start = shlex.join(argv), time.time_ns()
        try:
            out = subprocess.run(list(argv), input=stdin, capture_output=True,
                                 timeout=timeout, check=False)
        except FileNotFoundError:
            return CommandResult("", command, 127, "", f"{argv[0]}: command not found",
                                 start, time.time_ns())
        except subprocess.TimeoutExpired:
            return CommandResult("", command, 124, "",
                                 f"{command[:80]} did not finish in {timeout:.0f}s",
                                 start, time.time_ns())
        return CommandResult("", command, out.returncode, out.stdout.decode(errors="replace"),
                             out.stderr.decode(errors="replace"), start, time.time_ns())

    def put(self, local: Path, remote: str) -> None:
        subprocess.run(["cp", "--sparse=always", str(local), remote], check=True)

    def write_text(self, remote: str, text: str) -> None:
        Path(remote).write_text(text)


class RemoteDom0(Dom0):
    """dom0 over SSH (paramiko), its host key pinned."""

    def __init__(self, target: Target, client: paramiko.SSHClient) -> None:
        super().__init__(target)
        self.client = client

    def run(self, argv: Sequence[str], *, timeout: float = SHORT_TIMEOUT,
            stdin: bytes | None = None) -> CommandResult:
        command, start = shlex.join(argv), time.time_ns()
        try:
            return run_on(self.client, command, timeout=timeout, stdin=stdin, guest=DOM0)
        except GuestError as exc:
            status, said = (124 if exc.error_class == "timeout" else 255), exc.message
        except (paramiko.SSHException, OSError, EOFError) as exc:
            status, said = 255, f"lost the connection to dom0: {exc}"
        # A dom0 that cannot be asked is a failed command, not an exception: callers
        # decide (cleanup goes on, checks say what failed).
        return CommandResult(DOM0, command, status, "", said, start, time.time_ns())

    def put(self, local: Path, remote: str) -> None:
        # One SFTP session per upload: uploads run in parallel threads.
        with self.client.open_sftp() as sftp:
            sftp_put_sparse(sftp, local, remote)

    def write_text(self, remote: str, text: str) -> None:
        with self.client.open_sftp() as sftp, sftp.open(remote, "w") as f:
            f.write(text.encode())

    @property
    def jump_client(self) -> paramiko.SSHClient:
        return self.client

    def server_key_line(self) -> str:
        transport = self.client.get_transport()
        assert transport is not None
        key = transport.get_remote_server_key()
        return known_hosts_line(self.target.host, self.target.port, key)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def sftp_put_sparse(sftp: paramiko.SFTPClient, local: Path, remote: str,
                    block: int = 1 << 16) -> None:
    """Upload ``local`` writing only its non-zero blocks, then set the size: a 64 MiB
    writable disk with a few hundred KiB in it costs a few hundred KiB on the wire."""
    size = local.stat().st_size
    zero = bytes(block)
    with local.open("rb") as src, sftp.open(remote, "wb") as dst:
        dst.set_pipelined(True)
        offset = 0
        while True:
            chunk = src.read(block)
            if not chunk:
                break
            if chunk != zero[: len(chunk)]:
                dst.seek(offset)
                dst.write(chunk)
            offset += len(chunk)
    sftp.truncate(remote, size)


def known_hosts_line(host: str, port: int, key: paramiko.PKey) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.get_name()} {key.get_base64()}"


def _known_hosts_files(target: Target) -> list[Path]:
    if target.known_hosts:
        return [Path(target.known_hosts)]
    candidates = [Path.home() / ".ssh/known_hosts", cache_dir() / "xen_known_hosts"]
    return [p for p in candidates if p.is_file()]


def connect(target: Target) -> paramiko.SSHClient:
    """Log in to dom0 with its host key pinned; every failure is one clear UserError."""
    client = paramiko.SSHClient()
    host_keys = client.get_host_keys()  # pinned keys only; never saved back
    files = _known_hosts_files(target)
    for f in files:
        try:
            host_keys.load(str(f))
        except (OSError, paramiko.SSHException) as exc:
            raise UserError(f"cannot read known_hosts file {f}: {exc}") from None
    where = target.label
    lookup = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    if host_keys.lookup(lookup) is None:
        shown = ", ".join(str(f) for f in files) or "no known_hosts file"
        raise UserError(
            f"dom0 {where}: its host key is not pinned ({shown}); give known_hosts=FILE, or "
            f"record it once with `python -m harness.backends.xen record-host-key "
            f"{target.user}@{target.host}:{target.port} FILE` and check the fingerprint"
        )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    t = target.connect_timeout
    try:
        client.connect(
            target.host, port=target.port, username=target.user,
            key_filename=target.key, look_for_keys=target.key is None,
            allow_agent=target.key is None, timeout=t, banner_timeout=t, auth_timeout=t,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise UserError(
            f"dom0 {where}: host key mismatch: it offered {exc.key.get_name()} "
            f"{exc.key.get_fingerprint().hex()} but the pinned key is "
            f"{exc.expected_key.get_fingerprint().hex()} (man in the middle, or dom0 was "
            "reinstalled: check, then update known_hosts)"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise UserError(f"dom0 {where}: login refused ({exc}); give key=PATH for its "
                        "authorized key") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        client.close()
        raise UserError(f"dom0 {where} {_unreachable(exc, target.port, t)}") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return client


def _unreachable(exc: BaseException, port: int, timeout: float) -> str:
    """Why dom0 could not be reached, in words that point at the cause: nothing listening,
    no answer at all, or something that accepts but speaks no SSH (a hung sshd)."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = list(exc.errors.values())
        if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
            return (f"refused the connection: nothing listens on port {port} "
                    f"(is sshd running there?) [{exc}]")
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"is not reachable within {timeout:.0f}s: no answer to the connection"
    if isinstance(exc, paramiko.SSHException | EOFError):
        # Paramiko says "Error reading SSH protocol banner" or, when the banner wait and the
        # connect timeout end together, "No existing session": both mean no SSH handshake.
        return (f"accepted the connection but completed no SSH handshake within "
                f"{timeout:.0f}s (a hung or non-SSH service?): {exc or type(exc).__name__}")
    return f"is not reachable within {timeout:.0f}s: {exc or type(exc).__name__}"


_POOL: dict[tuple[Any, ...], Dom0] = {}
_POOL_LOCK = threading.Lock()


def dom0_for(target: Target) -> Dom0:
    """One connection per dom0 and process, shared by the backend and cleanup callbacks."""
    with _POOL_LOCK:
        d = _POOL.get(target.pool_key)
        if isinstance(d, RemoteDom0):
            transport = d.client.get_transport()
            if transport is None or not transport.is_active():
                d.close()
                d = None
        if d is None:
            d = LocalDom0(target) if target.local else RemoteDom0(target, connect(target))
            _POOL[target.pool_key] = d
        return d


@atexit.register
def close_pool() -> None:
    """Close every dom0 connection of this process (at exit, and between tests)."""
    with _POOL_LOCK:
        for d in _POOL.values():
            d.close()
        _POOL.clear()


def record_host_key(dest: str, path: Path, timeout: float = 15.0,
                    confirm: Callable[[str], bool] | None = None) -> str:
    """Fetch dom0's host key and append it to ``path``; returns the line written.

    This is the one place a key is learnt from the network, and only when a person runs it:
    the fingerprint is printed so it can be compared with dom0's own
    (``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`` there).
    """
    user_host, _, port_s = dest.rpartition(":") if dest.count(":") == 1 else (dest, "", "22")
    host = user_host.rpartition("@")[2]
    port = int(port_s or 22)
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    line = known_hosts_line(host, port, key)
    if confirm is not None and not confirm(line):
        raise UserError("not recorded")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")
    return line
