"""SSH to the guests: pinned host keys, phased readiness wait, connection pool and fan-out.

Host keys are never learnt from the network: every guest's key was generated on the host
(see ``identity``) and is in the run's ``known_hosts`` before the guest boots; paramiko
connects with ``RejectPolicy``.  One ``SSHClient`` per guest, kept open for the whole run;
fan-out goes through a bounded thread pool and returns a ``GroupResult`` in which a failed
guest is an entry, not an exception that loses the others' results.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import paramiko

from harness.backends.base import Guest, Jump
from harness.identity import KeyPair
from harness.plumbing.result import CommandResult

# paramiko logs every failed handshake attempt with a traceback; retries are expected during
# a boot storm, and failures are reported by the harness with their class instead.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

#: Failure classes, in the words the report groups by.
TIMEOUT, REFUSED, BANNER, AUTH, HOSTKEY, EXIT, LOST, ERROR = (
    "timeout", "refused", "banner", "auth", "hostkey", "exit", "lost", "error",
)


class GuestError(Exception):
    """One guest failed; ``error_class`` says how (timeout, refused, banner, auth...)."""

    def __init__(self, guest: str, error_class: str, message: str) -> None:
        super().__init__(f"{guest}: {error_class}: {message}")
        self.guest = guest
        self.error_class = error_class
        self.message = message


def classify(exc: BaseException) -> str:
    """Map an exception met while connecting or running to a failure class."""
    if isinstance(exc, GuestError):
        return exc.error_class
    if isinstance(exc, paramiko.BadHostKeyException):
        return HOSTKEY
    if isinstance(exc, paramiko.AuthenticationException):
        # "Authentication timeout." is a slow server, not a refused key.
        return TIMEOUT if "timeout" in str(exc).lower() else AUTH
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, socket.timeout | TimeoutError):
        return TIMEOUT
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "known_hosts" in text or "host key" in text.lower():
            return HOSTKEY
        if "banner" in text.lower():
            return BANNER
        if "timeout" in text.lower():
            return TIMEOUT
        return ERROR
    if isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError):
        return LOST
    if isinstance(exc, OSError):
        return REFUSED if exc.errno in (111, 113) else ERROR
    return ERROR


# -- keys and exported files ---------------------------------------------------------------


def write_client_key(state_dir: Path, key: KeyPair) -> Path:
    """The run's client key, mode 0600 from the moment it exists (never in a report)."""
    path = state_dir / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.private_openssh)
    (state_dir / "id_ed25519.pub").write_text(key.public_openssh + "\n")
    return path


def known_hosts_lines(guests: Iterable[Guest]) -> list[str]:
    lines = []
    for g in guests:
        kt, blob = g.spec.host_key.public_openssh.split()[:2]
        if g.port == 22:
            names = [g.name, g.host]
        else:  # how paramiko and OpenSSH name a host on another port
            names = [f"[{g.host}]:{g.port}", g.name, f"[{g.name}]:{g.port}"]
        lines.append(f"{','.join(names)} {kt} {blob}")
    return lines


def write_exports(run_dir: Path, labs: Sequence[tuple[Sequence[Guest], Path]]
                  ) -> tuple[Path, Path]:
    """``known_hosts`` and ``ssh_config`` so a person can ``ssh -F <run>/ssh_config g000``.

    ``labs`` holds each lab's guests with the client key that logs in to them: a run's
    files cover all its labs, each guest with its own lab's key.  A guest behind a jump host
    (xen's remote dom0, a cluster's other lab host) is reached with ``ProxyJump``; the person
    logs in to the jump host with its ``identity_file`` or else their own keys, checking its
    key against the run's file and their own.
    """
    known = run_dir / "known_hosts"
    guests = [g for lab_guests, _ in labs for g in lab_guests]
    jumps = sorted({g.jump for g in guests if g.jump is not None}, key=lambda j: (j.host, j.port))
    lines = known_hosts_lines(guests) + [j.known_hosts_line for j in jumps if j.known_hosts_line]
    known.write_text("\n".join(lines) + "\n")
    cfg = ["# scalelab run: ssh -F this-file <guest> ...", ""]
    # Jump hosts first: OpenSSH takes the first value it sees of an option, so these must
    # come before "Host *" sets what every guest shares.
    for j in jumps:
        cfg += [f"Host {_jump_alias(j)}", f"    HostName {j.host}", f"    Port {j.port}",
                f"    User {j.user}"]
        if j.identity_file:
            cfg += [f"    IdentityFile {Path(j.identity_file).expanduser().resolve()}",
                    "    IdentitiesOnly yes"]
        else:
            cfg.append("    IdentitiesOnly no")
        cfg += [f"    UserKnownHostsFile {known.resolve()} ~/.ssh/known_hosts", ""]
    # Each guest names its own lab's key (IdentityFile adds up across blocks, so it is
    # never in "Host *"), and only that key is offered.
    cfg += [
        "Host *",
        "    User root",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {known.resolve()}",
        "    StrictHostKeyChecking yes",
        "    GlobalKnownHostsFile /dev/null",
        "    LogLevel ERROR",
        "",
    ]
    for lab_guests, key_path in labs:
        for g in lab_guests:
            cfg += [f"Host {g.name}", f"    HostName {g.host}", f"    Port {g.port}",
                    f"    IdentityFile {key_path.resolve()}"]
            if g.port != 22 or g.host != g.spec.address or g.jump is not None:
                cfg.append(f"    HostKeyAlias {g.name}")
            if g.jump is not None:
                cfg.append(f"    ProxyJump {_jump_alias(g.jump)}")
            cfg.append("")
    config = run_dir / "ssh_config"
    config.write_text("\n".join(cfg))
    return config, known


def _jump_alias(j: Jump) -> str:
    return f"labhost-{j.host}-{j.port}"


# -- readiness ----------------------------------------------------------------------------


#: How much a connection reads from its socket at once.
_READ_AHEAD = 65536


class _TimedSocket:
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
        data = self._sock.recv(max(n, _READ_AHEAD))
        if data and self.first_byte_ns is None:
            self.first_byte_ns = time.time_ns()
        if len(data) > n:
            data, self._buf = data[:n], data[n:]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


PhaseCallback = Callable[[str, str, int, int], None]

#: Ciphers put first in every client transport. With an AEAD cipher the packet's tag is
#: checked inside ``cryptography``; with a separate MAC paramiko compares it byte by byte in
#: Python (``util.constant_time_bytes_eq``) and builds an ``hmac`` object per packet, which
#: profiled at about a fifth of the client's CPU in a fan-out of short commands.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A client transport that prefers AEAD ciphers (others stay allowed, after them)."""
    transport = paramiko.Transport(sock, **kwargs)
    opts = transport.get_security_options()
    first = [c for c in PREFERRED_CIPHERS if c in opts.ciphers]
    opts.ciphers = tuple(first + [c for c in opts.ciphers if c not in first])
    return transport


@dataclass
class ReadyOptions:
    timeout: float = 120.0
    #: The first TCP connect's timeout, grown by ``connect_timeout_growth`` after each
    #: connect that times out, up to ``connect_timeout_max``. A SYN sent before the guest
    #: has configured its address is dropped without an answer, and the kernel resends it
    #: only after its 1 s initial RTO: a short first timeout retries it sooner; the growth
    #: lets a loaded host (or a jump host's channel open) take longer.
    connect_timeout: float = 0.1
    connect_timeout_growth: float = 1.5
    connect_timeout_max: float = 2.0
    handshake_timeout: float = 30.0
    command_timeout: float = 60.0
    backoff_start: float = 0.02
    backoff_max: float = 0.5
    first_command: str = "cat /etc/hostname"


class HandshakeGate:
    """Caps concurrent SSH handshakes (sshd's MaxStartups, and our CPU) across the lab."""

    def __init__(self, limit: int) -> None:
        self._sem = threading.BoundedSemaphore(max(1, limit))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._sem:
            yield


def _open_socket(guest: Guest, timeout: float, jump_clients: Mapping[Jump, paramiko.SSHClient]
                 ) -> Any:
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


def connect_ready(
    guest: Guest,
    key: paramiko.PKey,
    host_keys: paramiko.HostKeys,
    gate: HandshakeGate,
    on_phase: PhaseCallback,
    opts: ReadyOptions,
    jump_clients: Mapping[Jump, paramiko.SSHClient] | None = None,
    dead: Callable[[], str | None] | None = None,
) -> paramiko.SSHClient:
    """Wait for ``guest`` to answer SSH with its pinned key; record each phase.

    Phases: ``tcp`` (until the port accepts), ``banner`` (until the server's identification
    arrives), ``auth`` (key exchange, host key check and public-key authentication) and
    ``first_command``.  Refused and timed-out connects are retried with backoff until
    ``opts.timeout``; a host key mismatch or an authentication failure is final, and so is
    a guest that ``dead()`` says has died (the backend's word, asked before each retry).
    """
    deadline = time.monotonic() + opts.timeout
    delay = opts.backoff_start
    # paramiko looks the host key up as "name" on port 22 and "[name]:port" elsewhere.
    connect_name = guest.host if guest.port == 22 and guest.jump is None else guest.name
    lookup_name = connect_name if guest.port == 22 else f"[{connect_name}]:{guest.port}"
    t0 = time.time_ns()
    last: BaseException | None = None
    connect_timeout = opts.connect_timeout
    while True:
        why = dead() if dead is not None and last is not None else None
        if why:
            raise GuestError(guest.name, LOST, f"died before answering: {why}")
        if time.monotonic() > deadline:
            cls = classify(last) if last else TIMEOUT
            raise GuestError(guest.name, cls if cls != ERROR else TIMEOUT,
                             f"not ready after {opts.timeout:.0f}s (last: {last})")
        try:
            sock = _open_socket(guest, connect_timeout, jump_clients or {})
        except (OSError, paramiko.SSHException) as exc:
            last = exc
            # Longer each time (a jump host's channel open may need more than the first
            # timeout); no extra sleep after a timeout, which was the wait already.
            connect_timeout = min(connect_timeout * opts.connect_timeout_growth,
                                  opts.connect_timeout_max)
            if isinstance(exc, TimeoutError):
                continue
            time.sleep(delay)
            delay = min(delay * 1.5, opts.backoff_max)
            continue
        t_tcp = time.time_ns()
        timed = _TimedSocket(sock) if isinstance(sock, socket.socket) else sock
        client = paramiko.SSHClient()
        # Only this guest's pinned key, under the name paramiko will look it up by.
        own = client.get_host_keys()
        for keytype, hostkey in (host_keys.lookup(lookup_name) or {}).items():
            own.add(lookup_name, keytype, hostkey)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            with gate.slot():
                client.connect(
                    connect_name,
                    port=guest.port,
                    username="root",
                    pkey=key,
                    sock=cast(Any, timed),
                    look_for_keys=False,
                    allow_agent=False,
                    # `timeout` bounds the whole key exchange here (the socket is ours):
                    # on a loaded 2-core host 64 handshakes at once need more than 1 s.
                    timeout=opts.handshake_timeout,
                    banner_timeout=max(5.0, min(30.0, deadline - time.monotonic())),
                    auth_timeout=30.0,
                    transport_factory=_transport,
                )
        except Exception as exc:
            client.close()
            cls = classify(exc)
            if cls in (HOSTKEY, AUTH) or time.monotonic() > deadline:
                raise GuestError(guest.name, cls, str(exc) or type(exc).__name__) from exc
            last = exc
            time.sleep(delay)
            delay = min(delay * 1.5, opts.backoff_max)
            continue
        t_auth = time.time_ns()
        t_banner = getattr(timed, "first_byte_ns", None) or t_tcp
        try:
            res = run_on(client, opts.first_command, timeout=opts.command_timeout)
        except Exception as exc:
            client.close()
            cls = classify(exc)
            if cls in (TIMEOUT, LOST, ERROR) and time.monotonic() < deadline:
                last = exc  # an overloaded guest: try the whole sequence again
                continue
            raise GuestError(guest.name, cls, f"first command failed: {exc}") from exc
        on_phase(guest.name, "tcp", t0, t_tcp)
        on_phase(guest.name, "banner", t_tcp, t_banner)
        on_phase(guest.name, "auth", t_banner, t_auth)
        on_phase(guest.name, "first_command", t_auth, time.time_ns())
        if res.exit_status != 0:
            client.close()
            raise GuestError(guest.name, EXIT, f"first command exited {res.exit_status}")
        if opts.first_command == "cat /etc/hostname" and res.stdout.strip() != guest.name:
            client.close()
            raise GuestError(
                guest.name, "identity", f"guest says its hostname is {res.stdout.strip()!r}"
            )
        return client


# -- commands -----------------------------------------------------------------------------


#: Output beyond this many bytes per stream is dropped (and said so): an agent that prints
#: gigabytes must not take the harness's memory with it.
MAX_OUTPUT = 16 << 20


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
        text = b"".join(self.chunks).decode(errors="replace")
        if self.dropped:
            text += f"\n[scalelab: {self.dropped} more bytes of output dropped]\n"
        return text


#: While stdout is quiet, stderr is looked at this often, so that a chatty stderr cannot
#: fill the channel window while we wait on stdout.
_STDERR_POLL = 0.1


def _drain(chan: paramiko.Channel, timeout: float | None) -> tuple[str, str]:
    """stdout and stderr to EOF, read by the calling thread (no helper thread per command)."""
    out, err = _Capped(), _Capped()
    deadline = None if timeout is None else time.monotonic() + timeout
    chan.settimeout(_STDERR_POLL)
    while True:
        try:
            data: bytes | None = chan.recv(65536)
        except TimeoutError:
            data = None
        while chan.recv_stderr_ready():
            err.add(chan.recv_stderr(65536))
        if data == b"":  # EOF: paramiko closes the stderr buffer at the same moment
            break
        if data:
            out.add(data)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
    while data := chan.recv_stderr(65536):  # what is left is already buffered
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
        raise GuestError(guest, LOST, "connection is closed")
    start = time.time_ns()
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
        raise GuestError(guest, TIMEOUT, f"{command!r} did not finish in {timeout}s") from exc
    finally:
        chan.close()
    end = start + (time.perf_counter_ns() - mono)
    return CommandResult(guest, command, status, out, err, start, end)


@dataclass
class GroupResult:
    """guest name → CommandResult (or any value) for the guests that answered, errors apart."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, GuestError] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.results) + len(self.errors)

    def __getitem__(self, guest: str) -> Any:
        if guest in self.errors:
            raise self.errors[guest]
        return self.results[guest]

    @property
    def ok(self) -> bool:
        return not self.errors and all(
            getattr(r, "ok", True) for r in self.results.values()
        )

    @property
    def succeeded(self) -> dict[str, Any]:
        return {g: r for g, r in self.results.items() if getattr(r, "ok", True)}

    @property
    def failed(self) -> dict[str, str]:
        """guest → failure class, for errors and non-zero exits alike."""
        out = {g: e.error_class for g, e in self.errors.items()}
        out.update({g: EXIT for g, r in self.results.items() if not getattr(r, "ok", True)})
        return out

    def success_rate(self) -> float:
        return len(self.succeeded) / len(self) if len(self) else 0.0

    def reason(self, guest: str) -> str:
        """Why ``guest`` failed, in one line: its error, or its command's last stderr line."""
        if guest in self.errors:
            return self.errors[guest].message
        res = self.results.get(guest)
        stderr = str(getattr(res, "stderr", "") or "")
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        return lines[-1][:500] if lines else f"exit status {getattr(res, 'exit_status', '?')}"


class Fleet:
    """Open connections to a set of guests and a bounded pool to fan work out over them."""

    def __init__(
        self,
        clients: Mapping[str, paramiko.SSHClient],
        guests: Mapping[str, Guest],
        max_workers: int = 64,
    ) -> None:
        self.clients = dict(clients)
        self.guests = dict(guests)
        self.max_workers = max(1, max_workers)
        self.lost: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=min(self.max_workers, max(1, len(self.clients))),
            thread_name_prefix="fleet",
        )

    @property
    def names(self) -> list[str]:
        return [n for n in self.clients if n not in self.lost]

    def subset(self, names: Iterable[str]) -> Fleet:
        """A fleet over some of the guests, sharing these connections."""
        keep = [n for n in names if n in self.clients]
        sub = Fleet({n: self.clients[n] for n in keep}, {n: self.guests[n] for n in keep},
                    self.max_workers)
        sub.lost = self.lost  # shared: a guest lost anywhere is lost everywhere
        return sub

    def map(
        self,
        func: Callable[[str, paramiko.SSHClient], Any],
        names: Iterable[str] | None = None,
    ) -> GroupResult:
        """Call ``func(name, client)`` for each guest in parallel; collect results and errors."""
        group = GroupResult()
        targets = list(self.names if names is None else names)
        for n in targets:
            if n in self.lost:
                group.errors[n] = GuestError(n, LOST, "guest was lost earlier in the run")
        futures = {
            n: self._pool.submit(func, n, self.clients[n]) for n in targets if n not in self.lost
        }
        for n, fut in futures.items():
            try:
                group.results[n] = fut.result()
            except Exception as exc:
                err = exc if isinstance(exc, GuestError) else GuestError(n, classify(exc), str(exc))
                group.errors[n] = err
                if err.error_class == LOST:
                    self.lost.setdefault(n, time.time_ns())
        return group

    def run(self, command: str, *, timeout: float | None = 60.0,
            names: Iterable[str] | None = None) -> GroupResult:
        """Run ``command`` on every guest; each result is a CommandResult."""
        return self.map(lambda n, c: run_on(c, command, timeout=timeout, guest=n), names)

    def put(self, local: Path, remote: str, *, mode: int | None = None,
            names: Iterable[str] | None = None) -> GroupResult:
        """Upload a file or a directory tree to every guest over SFTP."""

        def upload(name: str, client: paramiko.SSHClient) -> str:
            with client.open_sftp() as sftp:
                _sftp_put(sftp, local, remote, mode)
            return remote

        return self.map(upload, names)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                c.close()


def _sftp_put(sftp: paramiko.SFTPClient, local: Path, remote: str, mode: int | None) -> None:
    if local.is_dir():
        with contextlib.suppress(OSError):
            sftp.mkdir(remote)
        for child in sorted(local.iterdir()):
            _sftp_put(sftp, child, f"{remote}/{child.name}", None)
        return
    sftp.put(str(local), remote)
    st_mode = mode if mode is not None else (local.stat().st_mode & 0o777)
    sftp.chmod(remote, st_mode)


def load_private_key(text: str) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(text))


def host_keys_for(guests: Iterable[Guest]) -> paramiko.HostKeys:
    hk = paramiko.HostKeys()
    for line in known_hosts_lines(guests):
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        assert entry is not None
        for name in entry.hostnames:
            hk.add(name, entry.key.get_name(), entry.key)
    return hk


def quote_args(argv: Sequence[str]) -> str:
    """A command line for the guest's shell from an argument list (everything quoted)."""
    return shlex.join(argv)
