"""harness.ssh pieces on their own, rootless and without a guest: failure classes from the
exceptions the network really raises, the backoff schedule, the first command's check,
and GuestError / GroupResult through pickle."""

from __future__ import annotations

import errno
import ipaddress
import pickle
import socket
import time
from collections.abc import Callable, Iterator

import paramiko
import pytest
from helpers.sshserver import free_port, ssh_server

from harness.backends.base import Guest
from harness.identity import KeyPair, make_specs
from harness.plumbing.result import CommandResult
from harness.ssh import (
    HOSTNAME,
    Backoff,
    Failure,
    FirstCommand,
    GroupResult,
    GuestError,
    HandshakeGate,
    ReadyOptions,
    classify,
    connect_ready,
    load_private_key,
)

SPEC = make_specs("20261201-000000-ssh001", 1, ipaddress.IPv4Network("10.213.251.0/24"))[0]


def _guest(port: int = 22) -> Guest:
    return Guest(SPEC, "127.0.0.1", port)


def _key() -> paramiko.PKey:
    return load_private_key(KeyPair.generate().private_openssh)


def _result(status: int = 0, stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult(SPEC.name, "cat /etc/hostname", status, stdout, stderr, 1, 2)


# -- failure classes ---------------------------------------------------------------------------


def test_failure_values_are_the_strings_rows_and_reports_hold() -> None:
    assert {str(f) for f in Failure} == {
        "timeout", "refused", "banner", "auth", "hostkey", "exit", "lost", "error", "identity",
        "output",
    }
    lost: str = Failure.LOST  # as a row's column sees it
    assert lost == "lost" and hash(lost) == hash("lost") and f"{Failure.HOSTKEY}" == "hostkey"
    assert GuestError("g", Failure.AUTH, "no").args == ("g: auth: no",)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def _raised(func: Callable[[], object]) -> BaseException:
    with pytest.raises(BaseException) as info:
        func()
    return info.value


def test_refused_connect_is_refused() -> None:
    exc = _raised(lambda: socket.create_connection(("127.0.0.1", free_port()), timeout=2))
    assert isinstance(exc, ConnectionRefusedError)
    assert classify(exc) is Failure.REFUSED


def test_socket_timeout_is_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    a.settimeout(0.01)
    exc = _raised(lambda: a.recv(1))
    assert isinstance(exc, socket.timeout)
    assert classify(exc) is Failure.TIMEOUT


def test_broken_pipe_and_reset_are_lost(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.close()

    def write() -> None:
        for _ in range(100):  # the first write may be buffered before the peer's close shows
            a.sendall(b"x" * 65536)

    exc = _raised(write)
    assert isinstance(exc, BrokenPipeError)
    assert classify(exc) is Failure.LOST
    assert classify(ConnectionResetError(errno.ECONNRESET, "reset")) is Failure.LOST


def test_closed_stream_is_lost(pair: tuple[socket.socket, socket.socket]) -> None:
    """paramiko raises EOFError when the server closes during the key exchange."""
    a, b = pair
    b.close()
    t = paramiko.Transport(a)
    try:
        exc = _raised(lambda: t.start_client(timeout=5))
    finally:
        t.close()
    assert isinstance(exc, paramiko.SSHException | EOFError), repr(exc)
    # Either is how paramiko reports the peer's close: as a banner it never got, or as EOF.
    assert classify(exc) in (Failure.BANNER, Failure.LOST)
    assert classify(EOFError()) is Failure.LOST


def test_silent_peer_is_banner(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    t = paramiko.Transport(a)
    t.banner_timeout = 0.2
    try:
        exc = _raised(lambda: t.start_client(timeout=5))
    finally:
        t.close()
    assert isinstance(exc, paramiko.SSHException) and "banner" in str(exc)
    assert classify(exc) is Failure.BANNER


def test_host_key_and_auth_failures() -> None:
    assert classify(paramiko.BadHostKeyException("g", _key(), _key())) is Failure.HOSTKEY
    assert classify(paramiko.SSHException("Server 'g' not found in known_hosts")) is Failure.HOSTKEY
    assert classify(paramiko.AuthenticationException("Authentication failed.")) is Failure.AUTH
    assert classify(paramiko.BadAuthenticationType("no", ["password"])) is Failure.AUTH
    # A slow server, not a refused key.
    assert classify(paramiko.AuthenticationException("Authentication timeout.")) is Failure.TIMEOUT
    # The connection went mid-authentication (an overloaded guest): lost, retried, not final.
    assert classify(paramiko.AuthenticationException(
        "Authentication failed: transport shut down or saw EOF")) is Failure.LOST


def test_other_errors() -> None:
    assert classify(OSError(errno.EHOSTUNREACH, "No route to host")) is Failure.REFUSED
    assert classify(OSError(errno.EACCES, "Permission denied")) is Failure.ERROR
    assert classify(paramiko.SSHException("Incompatible version")) is Failure.ERROR
    assert classify(ValueError("x")) is Failure.ERROR


def test_guest_error_keeps_its_class() -> None:
    assert classify(GuestError("g", Failure.EXIT, "status 3")) is Failure.EXIT
    # Another layer's word (the store's "exception") passes through as given.
    assert classify(GuestError("g", "exception", "boom")) == "exception"


# -- backoff -----------------------------------------------------------------------------------


def test_backoff_grows_by_half_up_to_its_cap() -> None:
    b = Backoff.of(ReadyOptions())
    delays = [b.next_delay() for _ in range(12)]
    want = [min(0.02 * 1.5**i, 0.1) for i in range(12)]
    assert delays == pytest.approx(want)
    assert delays[:3] == pytest.approx([0.02, 0.03, 0.045]) and delays[-1] == 0.1


def test_connect_timeout_grows_by_half_up_to_its_cap() -> None:
    b = Backoff.of(ReadyOptions())
    seen = [b.connect_timeout]
    for _ in range(10):
        b.connect_failed()
        seen.append(b.connect_timeout)
    assert seen == pytest.approx([min(0.1 * 1.5**i, 2.0) for i in range(11)])
    # A direct connect's stays under the kernel's 1 s SYN retransmission.
    b = Backoff.of(ReadyOptions(), direct=True)
    for _ in range(10):
        b.connect_failed()
    assert b.connect_timeout == pytest.approx(0.2)


def test_refused_guest_is_retried_on_the_schedule_until_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    real = Backoff.next_delay

    def noted(self: Backoff) -> float:
        pauses.append(real(self))
        return pauses[-1]

    monkeypatch.setattr(Backoff, "next_delay", noted)
    with pytest.raises(GuestError) as err:
        connect_ready(_guest(free_port()), _key(), paramiko.HostKeys(), HandshakeGate(1),
                      lambda *a: None, ReadyOptions(timeout=0.5))
    assert err.value.error_class is Failure.REFUSED and "not ready after" in err.value.message
    assert len(pauses) >= 4
    assert pauses == pytest.approx([min(0.02 * 1.5**i, 0.1) for i in range(len(pauses))])


def test_dead_guest_is_asked_after_a_failed_attempt_and_is_final() -> None:
    asked: list[float] = []

    def dead() -> str | None:
        asked.append(time.monotonic())
        return "exited with status 1"

    t0 = time.monotonic()
    with pytest.raises(GuestError) as err:
        connect_ready(_guest(free_port()), _key(), paramiko.HostKeys(), HandshakeGate(1),
                      lambda *a: None, ReadyOptions(timeout=30), dead=dead)
    assert err.value.error_class is Failure.LOST
    assert err.value.message == "died before answering: exited with status 1"
    assert len(asked) == 1 and time.monotonic() - t0 < 5  # not before the first attempt


# -- the first command -------------------------------------------------------------------------


def test_default_first_command_is_the_hostname_check() -> None:
    assert ReadyOptions().first_command is HOSTNAME
    assert HOSTNAME.command == "cat /etc/hostname"
    g = _guest()
    assert HOSTNAME.check(g, _result(stdout=f"{g.name}\n")) is None


def test_wrong_hostname_is_an_identity_failure() -> None:
    err = HOSTNAME.check(_guest(), _result(stdout="g001\n"))
    assert err is not None and err.error_class is Failure.IDENTITY
    assert err.guest == SPEC.name and err.message == "guest says its hostname is 'g001'"


def test_failed_first_command_is_exit() -> None:
    err = HOSTNAME.check(_guest(), _result(status=3, stdout=SPEC.name))
    assert err is not None and err.error_class is Failure.EXIT
    assert err.message == "first command exited 3"


def test_a_first_command_without_expectation_checks_only_the_status() -> None:
    probe = FirstCommand("true")
    assert probe.check(_guest(), _result(stdout="anything")) is None
    assert probe.check(_guest(), _result(status=1)) is not None


def _pin(guest: Guest, key: paramiko.PKey) -> paramiko.HostKeys:
    hk = paramiko.HostKeys()
    hk.add(f"[{guest.name}]:{guest.port}", key.get_name(), key)
    return hk


def test_the_check_is_applied_after_the_phases_are_recorded() -> None:
    """Against a real server answering ``g000``: a check expecting another answer fails
    the guest as ``identity``, and its phases are still recorded."""
    host_key, client_key = load_private_key(SPEC.host_key.private_openssh), _key()
    with ssh_server(host_key, client_key) as port:
        g = _guest(port)
        phases: list[str] = []
        opts = ReadyOptions(timeout=5, first_command=FirstCommand(
            "cat /etc/machine-id", expect=lambda guest: "not-g000", what="machine id"))
        with pytest.raises(GuestError) as err:
            connect_ready(g, client_key, _pin(g, host_key), HandshakeGate(1),
                          lambda name, op, a, b: phases.append(op), opts)
    assert err.value.error_class is Failure.IDENTITY
    assert err.value.message == "guest says its machine id is 'g000'"
    assert phases == ["tcp", "banner", "auth", "first_command"]


# -- pickle ------------------------------------------------------------------------------------


def test_guest_error_survives_pickle() -> None:
    err = GuestError("lab-g003", Failure.LOST, "connection is closed")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is GuestError
    assert (back.guest, back.error_class, back.message) == (
        "lab-g003", "lost", "connection is closed")
    assert back.error_class is Failure.LOST
    assert str(back) == str(err) and back.args == err.args
    plain = pickle.loads(pickle.dumps(GuestError("g", "exception", "boom")))
    assert plain.error_class == "exception"


def test_group_result_with_an_error_survives_pickle() -> None:
    ok = CommandResult("g000", "true", 0, "", "", 10, 20)
    bad = CommandResult("g001", "true", 2, "", "first\nlast line\n", 10, 30)
    group = GroupResult({"g000": ok, "g001": bad},
                        {"g002": GuestError("g002", Failure.TIMEOUT, "'true' did not finish")})
    back = pickle.loads(pickle.dumps(group))
    assert back.results == group.results
    assert back.failed == {"g001": "exit", "g002": "timeout"}
    assert back.reason("g001") == "last line"
    assert back.reason("g002") == "'true' did not finish"
    with pytest.raises(GuestError) as err:
        back["g002"]
    assert err.value.guest == "g002" and err.value.error_class is Failure.TIMEOUT


def test_ready_options_survive_pickle() -> None:
    """The default check's ``expect`` is a module-level function: options pickle too."""
    back = pickle.loads(pickle.dumps(ReadyOptions(timeout=7)))
    assert back.timeout == 7 and back.first_command == HOSTNAME
    assert back.first_command.expect is HOSTNAME.expect
