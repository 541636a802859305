"""``ClusterFleet``: a fan-out (``harness.ssh.FanOut``) whose guests live on shards.  The
plugin, the agents and the scenarios use it as any lab's Fleet; each call goes to every shard
concerned at once and runs there against the shard's own SSH connections."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paramiko

from harness.backends.base import Guest
from harness.cluster.connect import ShardHandle, ShardLost
from harness.cluster.wire import Upload, dumps_function
from harness.roles import Roles
from harness.ssh import LOST, GroupResult, GuestError

#: Called once per shard found lost during a call: (handle, what happened).
LostHook = Callable[[ShardHandle, ShardLost], None]


class ClusterFleet:
    """Fan-out over guests spread across shards (see the module doc)."""

    def __init__(
        self,
        routes: dict[str, ShardHandle],
        guests: dict[str, Guest],
        on_lost: LostHook,
        max_workers: int = 64,
    ) -> None:
        self.guests = dict(guests)
        self.routes = routes  # guest name → its shard, in the lab's guest order
        self.on_lost = on_lost
        self.max_workers = max_workers
        self.lost: dict[str, int] = {}
        self.roles = Roles()

    @property
    def names(self) -> list[str]:
        return [n for n in self.routes if n not in self.lost]

    def subset(self, names: Iterable[str]) -> ClusterFleet:
        """A fleet over some of the guests, sharing shards and the lost set."""
        keep = [n for n in names if n in self.routes]
        sub = ClusterFleet({n: self.routes[n] for n in keep}, {n: self.guests[n] for n in keep},
                           self.on_lost, self.max_workers)
        sub.lost = self.lost  # shared: a guest lost anywhere is lost everywhere
        sub.roles = self.roles.restricted(keep)
        return sub

    def role(self, name: str) -> ClusterFleet:
        return self.subset(self.roles.members(name))

    def map(
        self,
        func: Callable[[str, paramiko.SSHClient], Any],
        names: Iterable[str] | None = None,
    ) -> GroupResult:
        """Ship ``func`` (cloudpickle) to the shards; each calls it for its own guests."""
        blob = dumps_function(func)
        return self._fan(lambda h, part: h.start_map(blob, part), names)

    def run(self, command: str, *, timeout: float | None = 60.0,
            names: Iterable[str] | None = None) -> GroupResult:
        return self._fan(lambda h, part: h.start_run(command, timeout, part), names)

    def put(self, local: Path, remote: str, *, mode: int | None = None,
            names: Iterable[str] | None = None) -> GroupResult:
        upload = Upload.read(local)
        return self._fan(lambda h, part: h.start_put(upload, remote, mode, part), names)

    def lose(self, name: str) -> None:
        """Its shard closed the guest's connection already (the nemesis's kill went there)."""
        self.lost.setdefault(name, time.time_ns())

    def close(self) -> None:
        """Nothing to close here: the connections are the shards' own."""

    def _fan(self, start: Callable[[ShardHandle, list[str]], Any],
             names: Iterable[str] | None) -> GroupResult:
        """``start`` the call on every shard concerned at once, then collect: a lost shard's
        guests are lost, the others' results come back in the caller's order."""
        targets = list(self.names if names is None else names)
        errors: dict[str, GuestError] = {}
        by_shard: dict[ShardHandle, list[str]] = {}
        for n in targets:
            if n in self.lost:
                errors[n] = GuestError(n, LOST, "guest was lost earlier in the run")
            else:
                by_shard.setdefault(self.routes[n], []).append(n)
        pending = []
        for shard, part in by_shard.items():
            try:
                pending.append((shard, part, start(shard, part)))
            except ShardLost as exc:
                self._shard_lost(shard, part, exc, errors)
        results: dict[str, Any] = {}
        for shard, part, fut in pending:
            try:
                got = shard.group(fut)
            except ShardLost as exc:
                self._shard_lost(shard, part, exc, errors)
                continue
            results.update(got.results)
            errors.update(got.errors)
            for n, err in got.errors.items():
                if err.error_class == LOST:
                    self.lost.setdefault(n, time.time_ns())
        group = GroupResult()
        for n in targets:  # the caller's order, as Fleet.map gives it
            if n in results:
                group.results[n] = results[n]
            elif n in errors:
                group.errors[n] = errors[n]
        return group

    def _shard_lost(self, shard: ShardHandle, part: list[str], exc: ShardLost,
                    errors: dict[str, GuestError]) -> None:
        self.on_lost(shard, exc)
        for n in part:
            errors[n] = GuestError(n, LOST, str(exc))
