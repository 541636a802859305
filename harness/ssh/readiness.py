"""Waiting for a guest to answer SSH with its pinned key, phase by phase.

One wait is a loop of attempts (TCP connect, then banner, key exchange, host key check and
authentication), with a backoff between them, until one attempt's connection passes the
first command's check.  Refused and timed-out attempts are retried until the deadline; a
host key mismatch, a refused client key and a guest its backend says has died are final.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import paramiko

from harness.backends.base import Guest, Jump
from harness.plumbing.result import CommandResult
from harness.ssh.failures import Failure, GuestError, classify
from harness.ssh.sessions import decline, run_command
from harness.ssh.transport import TimedSocket, client_transport, open_socket, settle

#: ``on_phase(guest, op, start_ns, end_ns)``: one timing row per phase of a guest's wait.
PhaseCallback = Callable[[str, str, int, int], None]

#: Each pause between attempts is this much longer than the one before (up to a cap).
BACKOFF_GROWTH = 1.5

#: Failures of the first command that an overloaded guest gives: worth a new attempt.
_RETRY_FIRST_COMMAND = (Failure.TIMEOUT, Failure.LOST, Failure.ERROR)

#: Failures of the handshake that another attempt cannot mend.
_FINAL_HANDSHAKE = (Failure.HOSTKEY, Failure.AUTH)


def _own_name(guest: Guest) -> str:
    return guest.name


@dataclass(frozen=True)
class FirstCommand:
    """The command that proves a guest ready, and how its answer is checked.

    It must exit 0; and when ``expect`` is given, its output (stripped) must equal
    ``expect(guest)``, or the guest is an ``identity`` failure whose message names the
    answer as ``what``.  (``expect`` is a function, not a value, so that one
    ``ReadyOptions`` serves every guest of a lab.)
    """

    command: str
    expect: Callable[[Guest], str] | None = None
    what: str = "answer"

    def check(self, guest: Guest, res: CommandResult) -> GuestError | None:
        """The failure ``res`` shows, or None when the guest passed."""
        if res.exit_status != 0:
            return GuestError(guest.name, Failure.EXIT, f"first command exited {res.exit_status}")
        if self.expect is None:
            return None
        answer = res.stdout.strip()
        if answer != self.expect(guest):
            return GuestError(guest.name, Failure.IDENTITY,
                              f"guest says its {self.what} is {answer!r}")
        return None


#: The default: an sshd with the pinned key answering is not enough, the guest must also
#: have booted with its own identity (hostname written from its spec).
HOSTNAME = FirstCommand("cat /etc/hostname", expect=_own_name, what="hostname")


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
    #: The cap of a direct (not jumped) connect's timeout: below the kernel's 1 s initial
    #: RTO, so that a SYN dropped while the guest had no address yet is never waited for
    #: until its retransmission (what made the 64-guest storm's median ``tcp`` 1.017 s),
    #: and a new SYN goes at once.  A guest with its address answers a SYN from the
    #: kernel's softirq, in microseconds even on a loaded host.
    direct_connect_timeout_max: float = 0.2
    handshake_timeout: float = 30.0
    command_timeout: float = 60.0
    #: The pause after a refused connect or a failed handshake, grown by BACKOFF_GROWTH
    #: after each, up to ``backoff_max``.
    backoff_start: float = 0.02
    #: A refused connect costs the host about 0.1 ms: a short cap means a guest is seen
    #: within ~0.1 s of its sshd listening instead of up to 0.5 s later.
    backoff_max: float = 0.1
    first_command: FirstCommand = HOSTNAME
    #: Why the guests run without executor sessions (harness/sessionbudget.py), or None:
    #: the first command then goes over an exec channel and so does every later one.
    sessions_off: str | None = None


@dataclass
class Backoff:
    """The pauses between one guest's attempts, and its growing connect timeout."""

    delay: float
    delay_max: float
    connect_timeout: float
    connect_timeout_growth: float
    connect_timeout_max: float

    @classmethod
    def of(cls, opts: ReadyOptions, direct: bool = False) -> Backoff:
        return cls(opts.backoff_start, opts.backoff_max, opts.connect_timeout,
                   opts.connect_timeout_growth,
                   opts.direct_connect_timeout_max if direct else opts.connect_timeout_max)

    def next_delay(self) -> float:
        """The pause to take now; the next one is longer, up to ``delay_max``."""
        delay = self.delay
        self.delay = min(self.delay * BACKOFF_GROWTH, self.delay_max)
        return delay

    def pause(self) -> None:
        time.sleep(self.next_delay())

    def connect_failed(self) -> None:
        """Longer each time: a jump host's channel open may need more than the first."""
        self.connect_timeout = min(self.connect_timeout * self.connect_timeout_growth,
                                   self.connect_timeout_max)


class HandshakeGate:
    """Caps concurrent SSH handshakes (sshd's MaxStartups, and our CPU) across the lab."""

    def __init__(self, limit: int) -> None:
        self._sem = threading.BoundedSemaphore(max(1, limit))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._sem:
            yield


class _Retry(Exception):
    """An attempt failed in a way another attempt may mend; ``pause``: back off first."""

    def __init__(self, cause: BaseException, *, pause: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.pause = pause


@dataclass
class _Connected:
    """An attempt's authenticated connection, and when each of its phases ended."""

    client: paramiko.SSHClient
    t_tcp: int
    t_banner: int
    t_auth: int


def _pinned_names(guest: Guest) -> tuple[str, str]:
    """The name paramiko connects by, and the name it then looks the host key up by.

    paramiko looks a host key up as "name" on port 22 and "[name]:port" elsewhere.
    """
    connect_name = guest.host if guest.port == 22 and guest.jump is None else guest.name
    lookup_name = connect_name if guest.port == 22 else f"[{connect_name}]:{guest.port}"
    return connect_name, lookup_name


@dataclass
class _Wait:
    """One guest's wait: what it is reached with, its deadline and its backoff."""

    guest: Guest
    key: paramiko.PKey
    host_keys: paramiko.HostKeys
    gate: HandshakeGate
    opts: ReadyOptions
    jump_clients: Mapping[Jump, paramiko.SSHClient]
    deadline: float
    backoff: Backoff

    def attempt(self) -> _Connected:
        """Connect and authenticate once; raises _Retry, or GuestError when final."""
        try:
            sock = open_socket(self.guest, self.backoff.connect_timeout, self.jump_clients)
        except (OSError, paramiko.SSHException) as exc:
            self.backoff.connect_failed()
            # No pause after a timeout, which was the wait already.
            raise _Retry(exc, pause=not isinstance(exc, TimeoutError)) from exc
        t_tcp = time.time_ns()
        timed = TimedSocket(sock) if isinstance(sock, socket.socket) else sock
        client = self._pinned_client()
        try:
            self._handshake(client, timed)
        except Exception as exc:
            client.close()
            cls = classify(exc)
            if cls in _FINAL_HANDSHAKE:
                raise GuestError(self.guest.name, cls, str(exc) or type(exc).__name__) from exc
            # Past the deadline too: the loop gives up with "not ready after …(last: …)",
            # the same words whichever attempt happened to be the last.
            raise _Retry(exc, pause=True) from exc
        t_auth = time.time_ns()
        settle(client)
        t_banner = getattr(timed, "first_byte_ns", None) or t_tcp
        return _Connected(client, t_tcp, t_banner, t_auth)

    def _pinned_client(self) -> paramiko.SSHClient:
        """A client that knows only this guest's pinned key and rejects any other."""
        _, lookup_name = _pinned_names(self.guest)
        client = paramiko.SSHClient()
        own = client.get_host_keys()
        for keytype, hostkey in (self.host_keys.lookup(lookup_name) or {}).items():
            own.add(lookup_name, keytype, hostkey)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return client

    def _handshake(self, client: paramiko.SSHClient, sock: Any) -> None:
        connect_name, _ = _pinned_names(self.guest)
        with self.gate.slot():
            client.connect(
                connect_name,
                port=self.guest.port,
                username="root",
                pkey=self.key,
                sock=cast(Any, sock),
                look_for_keys=False,
                allow_agent=False,
                # `timeout` bounds the whole key exchange here (the socket is ours):
                # on a loaded 2-core host 64 handshakes at once need more than 1 s.
                timeout=self.opts.handshake_timeout,
                banner_timeout=max(5.0, min(30.0, self.deadline - time.monotonic())),
                auth_timeout=30.0,
                transport_factory=client_transport,
            )

    def verify(self, conn: _Connected, on_phase: PhaseCallback, t0: int) -> paramiko.SSHClient:
        """Run the first command on ``conn``, record the phases, check the answer."""
        first = self.opts.first_command
        if self.opts.sessions_off is not None:
            decline(conn.client, self.opts.sessions_off)
        try:
            # Through the guest's executor, which this starts (exec channel without it).
            res = run_command(conn.client, first.command, timeout=self.opts.command_timeout,
                              guest=self.guest.name)
        except Exception as exc:
            conn.client.close()
            cls = classify(exc)
            if cls in _RETRY_FIRST_COMMAND and time.monotonic() < self.deadline:
                # An overloaded guest: try the whole sequence again, at once.
                raise _Retry(exc, pause=False) from exc
            raise GuestError(self.guest.name, cls, f"first command failed: {exc}") from exc
        name = self.guest.name
        # Recorded before the answer is checked: a guest that answers wrongly still took
        # this long to answer.
        on_phase(name, "tcp", t0, conn.t_tcp)
        on_phase(name, "banner", conn.t_tcp, conn.t_banner)
        on_phase(name, "auth", conn.t_banner, conn.t_auth)
        on_phase(name, "first_command", conn.t_auth, time.time_ns())
        failure = first.check(self.guest, res)
        if failure is not None:
            conn.client.close()
            raise failure
        return conn.client


def _give_up_if_final(guest: Guest, opts: ReadyOptions, deadline: float,
                      last: BaseException | None, dead: Callable[[], str | None] | None) -> None:
    """Raise when no attempt is left to make: the guest died, or the deadline passed."""
    # Only after a failed attempt: asking the backend costs, and a guest that answers the
    # first attempt need not be asked.
    why = dead() if dead is not None and last is not None else None
    if why:
        raise GuestError(guest.name, Failure.LOST, f"died before answering: {why}")
    if time.monotonic() > deadline:
        cls = classify(last) if last else Failure.TIMEOUT
        said = (str(last) or type(last).__name__) if last else "nothing"  # a bare EOFError
        # An unclassified last failure says less than "it did not come up in time".
        raise GuestError(guest.name, cls if cls != Failure.ERROR else Failure.TIMEOUT,
                         f"not ready after {opts.timeout:.0f}s (last: {said})")


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
    wait = _Wait(guest, key, host_keys, gate, opts, jump_clients or {},
                 time.monotonic() + opts.timeout, Backoff.of(opts, guest.jump is None))
    t0 = time.time_ns()
    last: BaseException | None = None
    while True:
        _give_up_if_final(guest, opts, wait.deadline, last, dead)
        try:
            return wait.verify(wait.attempt(), on_phase, t0)
        except _Retry as retry:
            last = retry.cause
            if retry.pause:
                wait.backoff.pause()
