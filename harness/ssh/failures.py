"""How a guest failed, in the words the report groups by, and the error that carries it."""

from __future__ import annotations

import enum
import errno
import socket
from typing import Any

import paramiko


class Failure(enum.StrEnum):
    """Failure classes.  A ``StrEnum`` so that each is equal to (and prints as) the plain
    string stored in timing rows and shown in reports: ``Failure.LOST == "lost"``."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    BANNER = "banner"
    AUTH = "auth"
    HOSTKEY = "hostkey"
    EXIT = "exit"
    LOST = "lost"
    ERROR = "error"
    #: The guest answered, but as someone else (its first command's answer was wrong).
    IDENTITY = "identity"
    #: The command ran, but what it left behind is unusable (not JSON, no result file).
    OUTPUT = "output"


# Module-level names, as callers have imported them since before the enum existed.
TIMEOUT = Failure.TIMEOUT
REFUSED = Failure.REFUSED
BANNER = Failure.BANNER
AUTH = Failure.AUTH
HOSTKEY = Failure.HOSTKEY
EXIT = Failure.EXIT
LOST = Failure.LOST
ERROR = Failure.ERROR
IDENTITY = Failure.IDENTITY


class GuestError(Exception):
    """One guest failed; ``error_class`` says how (timeout, refused, banner, auth...).

    ``error_class`` is usually a :class:`Failure`; any string is accepted, as rows written
    by other layers (``"exception"``) and values read back from a shard are plain strings.
    """

    def __init__(self, guest: str, error_class: str, message: str) -> None:
        super().__init__(f"{guest}: {error_class}: {message}")
        self.guest = guest
        self.error_class = error_class
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from ``self.args`` (the one formatted line), which does not
        # fit ``__init__``: rebuild from the three fields so the error crosses a pickle
        # (a shard's results, a process pool) whole.
        return (type(self), (self.guest, self.error_class, self.message))


#: errnos of a connect that no one answered: nothing listening, or no route to the guest yet.
_UNREACHED = (errno.ECONNREFUSED, errno.EHOSTUNREACH)


def classify(exc: BaseException) -> Failure | str:
    """Map an exception met while connecting or running to a failure class.

    A :class:`GuestError` keeps the class it was given (which may be a plain string).
    """
    if isinstance(exc, GuestError):
        return exc.error_class
    if isinstance(exc, paramiko.BadHostKeyException):
        return Failure.HOSTKEY
    if isinstance(exc, paramiko.AuthenticationException):
        # "Authentication timeout." is a slow server, not a refused key; "…transport shut
        # down or saw EOF" a connection lost mid-authentication (2 of 4096 guests on a host
        # at load 1000), which another attempt mends.  Only a refusal is final.
        text = str(exc).lower()
        if "timeout" in text:
            return Failure.TIMEOUT
        return Failure.LOST if "saw eof" in text else Failure.AUTH
    if isinstance(exc, ConnectionRefusedError):
        return Failure.REFUSED
    if isinstance(exc, socket.timeout | TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, paramiko.SSHException):
        return _classify_ssh(str(exc))
    if isinstance(exc, EOFError | ConnectionResetError | BrokenPipeError):
        return Failure.LOST
    if isinstance(exc, OSError):
        return Failure.REFUSED if exc.errno in _UNREACHED else Failure.ERROR
    return Failure.ERROR


def _classify_ssh(text: str) -> Failure:
    """paramiko raises a bare ``SSHException`` for many things; only its text tells them
    apart."""
    lower = text.lower()
    if "known_hosts" in text or "host key" in lower:
        return Failure.HOSTKEY
    if "banner" in lower:
        return Failure.BANNER
    if "timeout" in lower:
        return Failure.TIMEOUT
    return Failure.ERROR
