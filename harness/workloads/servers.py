"""Servers an agent starts in the background on guests: how they are started, waited for
and stopped, as shell commands run over the guests' SSH connections."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Server:
    """A server :meth:`Agents.serve` started in the background on some guests."""

    op: str
    names: tuple[str, ...]

    @property
    def log(self) -> str:
        return f"/var/log/scalelab-{self.op}.log"

    @property
    def pidfile(self) -> str:
        return f"/run/scalelab-{self.op}.pid"


# The server runs in a session of its own (setsid), so stopping it reaches every process
# it started. The shell that starts it is a process-group leader's child, so setsid needs
# no fork and $! is the server itself. A zombie counts as gone.
_ALIVE = ("alive() { kill -0 \"$1\" 2>/dev/null && "
          "! grep -qs '^State:[[:space:]]*Z' /proc/\"$1\"/status; }; ")


def start_command(server: Server, argv: Sequence[str], ready_line: str, timeout: float) -> str:
    log, pidfile, ready = (shlex.quote(x) for x in (server.log, server.pidfile, ready_line))
    tries = max(1, int(timeout / 0.05))
    return (
        _ALIVE
        + f"setsid nohup {shlex.join(argv)} > {log} 2>&1 < /dev/null & pid=$!; "
        f"echo $pid > {pidfile}; "
        f"for i in $(seq {tries}); do grep -q {ready} {log} && exit 0; "
        f"if ! alive $pid; then wait $pid; st=$?; cat {log} >&2; "
        f"echo \"the server exited (status $st) before it printed {ready}\" >&2; "
        # The server's own last words are the reason; say them last when there are some.
        f"[ -s {log} ] && tail -n 1 {log} >&2; exit 1; fi; "
        f"sleep 0.05; done; cat {log} >&2; "
        f"echo \"the server did not print {ready} within {timeout:g} s\" >&2; exit 1"
    )


def stop_command(server: Server, grace: float) -> str:
    log, pidfile = shlex.quote(server.log), shlex.quote(server.pidfile)
    tries = max(1, int(grace / 0.05))
    return (
        _ALIVE
        + f"[ -f {pidfile} ] || exit 0; pid=$(cat {pidfile}); "
        f"kill -TERM -- -$pid 2>/dev/null || kill -TERM $pid 2>/dev/null; "
        f"for i in $(seq {tries}); do alive $pid || break; sleep 0.05; done; "
        f"alive $pid && kill -KILL -- -$pid 2>/dev/null; "
        f"for i in $(seq 40); do alive $pid || break; sleep 0.05; done; "
        f"rm -f {pidfile}; cat {log} 2>/dev/null; ! alive $pid"
    )
