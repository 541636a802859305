"""The executor's wire protocol and its reading of commands: shared by the client
(:mod:`harness.ssh.executor`) and the guest program (:mod:`harness.ssh.executor_guest`),
whose sources are both sent to the guest and run there one after the other, in one
namespace.  Like the guest program, it imports only what is built into the interpreter.

A frame is ``HEAD`` (magic, request id, meta length, payload length; big-endian) followed by
the meta and the payload (raw bytes: a command's stdin, a file's contents, a reply's stdout
followed by its stderr).  The idea is mitogen's (a fixed binary header with ids, then the
message); the code is ours.
"""

from __future__ import annotations

import marshal
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = 0x534C  # "SL"
#: magic, request id, meta length, payload length.
HEAD = struct.Struct(">HIII")
CHUNK = 65536
#: A command made only of these characters (and single spaces) means the same to any shell
#: as its words do to execve: it is run without a shell.  Quotes, expansions, globs,
#: redirections, separators, comments and ``~`` all send it to the shell.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")
#: First words only a shell can run (keywords and builtins that change the shell itself).
_SHELL_ONLY = frozenset((
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done",
    "function", "select", "time", "cd", "exit", "export", "exec", "set", "unset", "alias",
    "source", ".", "eval", "read", "ulimit", "umask", "wait", "trap", "shift", "return",
    "break", "continue", "readonly", "local", "declare", "typeset", "command", "hash", "jobs",
    "fg", "bg"))


def frame(rid: int, meta: bytes, payload: bytes = b"") -> bytes:
    """One frame of an encoded ``meta``: :func:`encode_request` from the client,
    :func:`encode_reply` from the executor."""
    return HEAD.pack(MAGIC, rid, len(meta), len(payload)) + meta + payload


def encode_request(meta: dict[str, Any]) -> bytes:
    """A request's meta: ``marshal`` (built in; the client is trusted by the executor)."""
    return marshal.dumps(meta, 4)


def encode_reply(meta: dict[str, Any]) -> bytes:
    """A reply's meta: JSON (the client parses what a guest says as data, never more),
    written by hand for the few types a reply has."""
    return _json(meta).encode()


def _json(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, (int, float)):  # a tuple: guests may run a Python before 3.10
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(c if " " <= c < "\x7f" and c not in '"\\' else
                             f"\\u{ord(c):04x}" for c in v) + '"'
    if isinstance(v, dict):
        return "{" + ",".join(f"{_json(str(k))}:{_json(x)}" for k, x in v.items()) + "}"
    return "[" + ",".join(_json(x) for x in v) + "]"


class Frames:
    """Frames cut from a byte stream as it arrives, each meta read by ``decode``."""

    def __init__(self, decode: Any = marshal.loads) -> None:
        self.buf = bytearray()
        self.decode = decode

    def feed(self, data: bytes) -> list[tuple[int, dict[str, Any], bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= HEAD.size:
            magic, rid, mlen, plen = HEAD.unpack_from(self.buf)
            if magic != MAGIC:
                raise ValueError(f"bad frame magic {magic:#x}")
            end = HEAD.size + mlen + plen
            if len(self.buf) < end:
                break
            meta = self.decode(bytes(self.buf[HEAD.size:HEAD.size + mlen]))
            out.append((rid, meta, bytes(self.buf[HEAD.size + mlen:end])))
            del self.buf[:end]
        return out


def plain_argv(command: str, path: str) -> list[str] | None:
    """``command`` as an argv to exec directly, or None when it needs a shell."""
    words = command.split(" ")
    if not command or "" in words or not _PLAIN.issuperset(command.replace(" ", "")):
        return None
    if words[0] in _SHELL_ONLY or "=" in words[0]:
        return None
    exe = which(words[0], path)
    return None if exe is None else [exe, *words[1:]]


#: (name, PATH) → where it was found: a fan-out runs the same few commands over and over,
#: and each PATH search is a stat per directory.  A program that has gone since fails its
#: spawn, which drops the entry and leaves the command to the shell.
FOUND: dict[tuple[str, str], str] = {}


def which(name: str, path: str) -> str | None:
    hit = FOUND.get((name, path))
    if hit is not None:
        return hit
    candidates = [name] if "/" in name else [os.path.join(d or ".", name)
                                             for d in path.split(":")]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            FOUND[(name, path)] = c
            return c
    return None
