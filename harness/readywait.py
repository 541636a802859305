"""The readiness waits of one bring-up: a thread per guest (at most 256 at once), each from
the moment its guest is started until it answers authenticated SSH with its pinned key, or
fails (classified).  What a wait learns goes to the lab through :class:`WaitHooks`.

Admission control: at most :func:`boot_window` guests are booting (started, not yet
answered) at once.  ``submit`` is the backend's ``on_started``, called as each guest has
been started, so blocking there holds back the start of the next one: a storm of N guests
starts at the rate the host brings them up instead of all at once (4096 at once gave a
load average of 1584 on 2 cores and guests whose sshd never started before their ready
timeout, which counts from the moment a guest is admitted)."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import paramiko

from harness.backends.base import Guest, Jump, PhaseHook
from harness.config import LabConfig
from harness.ssh import GuestError, HandshakeGate, ReadyOptions, connect_ready, host_keys_for


@dataclass(frozen=True)
class WaitHooks:
    on_phase: PhaseHook
    on_ready: Callable[[str], None]
    on_failed: Callable[[str, GuestError], None]
    #: Why a guest can no longer come up (its process exited), asked between attempts.
    dead: Callable[[Guest], str | None]
    jump_clients: Callable[[], Mapping[Jump, paramiko.SSHClient]]


#: Guests booting at once per CPU: enough to keep every core busy while the earlier ones
#: wait on I/O or on the handshake gate, few enough that none is starved.
BOOTING_PER_CPU = 32


def boot_window() -> int:
    return BOOTING_PER_CPU * (os.cpu_count() or 1)


class ReadyWaiter:
    def __init__(self, key: paramiko.PKey, config: LabConfig, hooks: WaitHooks,
                 sessions_off: str | None = None) -> None:
        self.key, self.hooks = key, hooks
        self.gate = HandshakeGate(config.ssh_concurrency)
        self.opts = ReadyOptions(timeout=config.ready_timeout, sessions_off=sessions_off)
        self.pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="ready")
        self.futures: dict[Future[paramiko.SSHClient], Guest] = {}
        self.submitted: set[str] = set()
        self.abandoned = False
        self.lock = threading.Lock()
        self.admit = threading.BoundedSemaphore(boot_window())

    def _dead(self, guest: Guest) -> str | None:
        if self.abandoned:
            return "the bring-up was abandoned"
        return self.hooks.dead(guest)

    def submit(self, guest: Guest) -> None:
        """Start waiting for ``guest`` (once; later calls for it do nothing)."""
        with self.lock:
            if guest.name in self.submitted:
                return
            self.submitted.add(guest.name)
        # Blocks the backend's start loop while the window is full (see the module's doc).
        while not self.admit.acquire(timeout=0.5):
            if self.abandoned:
                return
        with self.lock:
            fut = self.pool.submit(
                connect_ready, guest, self.key, host_keys_for([guest]), self.gate,
                self.hooks.on_phase, self.opts, self.hooks.jump_clients(),
                functools.partial(self._dead, guest))
            self.futures[fut] = guest
        fut.add_done_callback(lambda _: self.admit.release())

    def collect(self) -> dict[str, paramiko.SSHClient]:
        """Wait for every submitted guest; the clients of those that answered."""
        clients: dict[str, paramiko.SSHClient] = {}
        try:
            for fut in as_completed(list(self.futures)):
                g = self.futures[fut]
                try:
                    clients[g.name] = fut.result()
                except GuestError as err:
                    self.hooks.on_failed(g.name, err)
                else:
                    self.hooks.on_ready(g.name)
        except BaseException:
            for c in clients.values():
                c.close()
            self.abandon()
            raise
        self.pool.shutdown(wait=False)
        return clients

    def abandon(self) -> None:
        """Stop the waits (each ends at its next retry) and close what they opened."""
        self.abandoned = True
        self.pool.shutdown(wait=True, cancel_futures=True)
        for fut in self.futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().close()
