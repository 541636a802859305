"""Fan-out: one open connection per guest and a bounded thread pool; a ``GroupResult`` in
which a failed guest is an entry, not an exception that loses the others' results."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paramiko

from harness.backends.base import Guest
from harness.roles import Roles
from harness.ssh.failures import Failure, GuestError, classify
from harness.ssh.sessions import put_tree, run_command, start_all


@dataclass
class GroupResult:
    """guest name → CommandResult (or any value) for the guests that answered, errors apart.

    Pickles (``GuestError`` does), so a group can cross a process boundary as it is.
    """

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
        out.update({g: Failure.EXIT for g, r in self.results.items()
                    if not getattr(r, "ok", True)})
        return out

    def failures(self) -> dict[str, GuestError]:
        """guest → its error, for errors and non-zero exits alike (an exit as ``exit``)."""
        out = dict(self.errors)
        for name, res in self.results.items():
            if not getattr(res, "ok", True):
                out[name] = GuestError(name, Failure.EXIT, self.reason(name)[:200])
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


class FanOut(Protocol):
    """What scenarios, agents and the nemesis use of a fleet: one lab's :class:`Fleet`, or
    a cluster's ``ClusterFleet`` whose guests live on other lab hosts."""

    guests: dict[str, Guest]
    #: guest → when it was lost (UTC ns); shared by every subset of one lab's fleet.
    lost: dict[str, int]
    #: The roles dealt out over these guests (empty unless the scenario or lab has roles).
    roles: Roles

    @property
    def names(self) -> list[str]:
        """The guests not lost, in the lab's order."""
        ...

    def subset(self, names: Iterable[str]) -> FanOut: ...

    def role(self, name: str) -> FanOut:
        """The guests of role ``name`` (UnknownRole for a role not dealt out here)."""
        ...

    def map(self, func: Callable[[str, paramiko.SSHClient], Any],
            names: Iterable[str] | None = None) -> GroupResult: ...

    def run(self, command: str, *, timeout: float | None = 60.0,
            names: Iterable[str] | None = None) -> GroupResult: ...

    def put(self, local: Path, remote: str, *, mode: int | None = None,
            names: Iterable[str] | None = None) -> GroupResult: ...

    def lose(self, name: str) -> None:
        """The guest is gone (killed): leave it out from now on and drop its connection."""
        ...

    def close(self) -> None: ...


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
        self.roles = Roles()
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
        sub.roles = self.roles.restricted(keep)
        return sub

    def role(self, name: str) -> Fleet:
        return self.subset(self.roles.members(name))

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
                group.errors[n] = GuestError(n, Failure.LOST, "guest was lost earlier in the run")
        futures = {
            n: self._pool.submit(func, n, self.clients[n]) for n in targets if n not in self.lost
        }
        for n, fut in futures.items():
            self._settle(group, n, fut.result)
        return group

    def _settle(self, group: GroupResult, name: str, result: Callable[[], Any]) -> None:
        """``result()`` into ``group``, its error classified (a lost guest is lost here on)."""
        try:
            group.results[name] = result()
        except Exception as exc:
            err = exc if isinstance(exc, GuestError) else GuestError(name, classify(exc), str(exc))
            group.errors[name] = err
            if err.error_class == Failure.LOST:
                self.lost.setdefault(name, time.time_ns())

    def run(self, command: str, *, timeout: float | None = 60.0,
            names: Iterable[str] | None = None) -> GroupResult:
        """Run ``command`` on every guest; each result is a CommandResult.

        Guests with a live executor session get it all at once from this thread (one frame
        each); the others (a session to open, or exec channels) go through the pool."""
        targets = list(self.names if names is None else names)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = start_all(self.clients, [n for n in targets if n not in self.lost], command,
                            timeout)
        group = self.map(lambda n, c: run_command(c, command, timeout=timeout, guest=n),
                         [n for n in targets if n not in pending])
        for n, p in pending.items():
            self._settle(group, n, functools.partial(p.result, deadline))
        return group

    def put(self, local: Path, remote: str, *, mode: int | None = None,
            names: Iterable[str] | None = None) -> GroupResult:
        """Upload a file or a directory tree to every guest (its session, else SFTP)."""
        return self.map(lambda n, c: put_tree(c, local, remote, mode, guest=n), names)

    def lose(self, name: str) -> None:
        self.lost.setdefault(name, time.time_ns())
        client = self.clients.get(name)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        # Not waiting: a command stuck on a dead guest must not hold up the teardown.
        self._pool.shutdown(wait=False, cancel_futures=True)
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                c.close()
