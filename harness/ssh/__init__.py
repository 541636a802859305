"""SSH to the guests: pinned host keys, phased readiness wait, commands and fan-out.

Host keys are never learnt from the network: every guest's key was generated on the host
(see ``identity``) and is in the run's ``known_hosts`` before the guest boots; paramiko
connects with ``RejectPolicy``.  One ``SSHClient`` per guest, kept open for the whole run;
fan-out goes through a bounded thread pool and returns a ``GroupResult`` in which a failed
guest is an entry, not an exception that loses the others' results.

The modules, from the bottom up: ``failures`` (failure classes, ``GuestError``,
``classify``), ``keys`` (client key, pinned host keys), ``files`` (the run's key file,
``known_hosts`` and ``ssh_config``), ``transport`` (socket and cipher tuning),
``commands`` (``run_on``: one exec channel per command), ``executor_guest`` and
``executor`` (a persistent session: one channel per guest to an executor there),
``sessions`` (which connection has one; ``run_command``), ``readiness``
(``connect_ready``), ``fanout`` (``Fleet``).
Callers import from this package, not from the modules.
"""

from __future__ import annotations

from harness.ssh.commands import MAX_OUTPUT, run_on
from harness.ssh.executor import Session
from harness.ssh.failures import (
    AUTH,
    BANNER,
    ERROR,
    EXIT,
    HOSTKEY,
    IDENTITY,
    LOST,
    REFUSED,
    TIMEOUT,
    Failure,
    GuestError,
    classify,
)
from harness.ssh.fanout import FanOut, Fleet, GroupResult
from harness.ssh.files import write_client_key, write_exports
from harness.ssh.keys import host_keys_for, known_hosts_lines, load_private_key
from harness.ssh.readiness import (
    HOSTNAME,
    Backoff,
    FirstCommand,
    HandshakeGate,
    PhaseCallback,
    ReadyOptions,
    connect_ready,
)
from harness.ssh.sessions import ensure_session, no_executor, run_command, session_of
from harness.ssh.transport import PREFERRED_CIPHERS, READ_AHEAD, TimedSocket

# The names tests/test_ssh.py imported while these were private to the one-module ssh.py;
# they go once it imports READ_AHEAD and TimedSocket.
_READ_AHEAD = READ_AHEAD
_TimedSocket = TimedSocket

__all__ = [
    "AUTH",
    "BANNER",
    "ERROR",
    "EXIT",
    "HOSTKEY",
    "HOSTNAME",
    "IDENTITY",
    "LOST",
    "MAX_OUTPUT",
    "PREFERRED_CIPHERS",
    "READ_AHEAD",
    "REFUSED",
    "TIMEOUT",
    "Backoff",
    "Failure",
    "FanOut",
    "FirstCommand",
    "Fleet",
    "GroupResult",
    "GuestError",
    "HandshakeGate",
    "PhaseCallback",
    "ReadyOptions",
    "Session",
    "TimedSocket",
    "classify",
    "connect_ready",
    "ensure_session",
    "host_keys_for",
    "known_hosts_lines",
    "load_private_key",
    "no_executor",
    "run_command",
    "run_on",
    "session_of",
    "write_client_key",
    "write_exports",
]
