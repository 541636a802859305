"""The backend interface: turn a list of GuestSpec into running guests and take them down.

Modelled on testinfra's registry (scheme → dotted path, imported lazily) and enoslib's
provider lifecycle (``up``/``down``, usable as a context manager).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.identity import GuestSpec
from harness.image.cache import Image
from harness.state import RunState

#: Called by a backend as each guest passes a phase: (guest name, phase, start_ns, end_ns).
PhaseHook = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class Jump:
    """An SSH jump host through which a guest is reached (xen's remote dom0)."""

    host: str
    port: int
    user: str
    known_hosts_line: str
    #: The key a person logs in to the jump host with (e.g. xen's ``key=``); without one,
    #: OpenSSH offers the person's own keys (agent, ~/.ssh/id_*).
    identity_file: str | None = None


@dataclass(eq=False)
class Guest:
    """A running guest: its spec plus how to reach it."""

    spec: GuestSpec
    host: str
    port: int = 22
    jump: Jump | None = None
    lab_host: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def __hash__(self) -> int:
        return hash(self.spec.name)

    def __repr__(self) -> str:
        return f"Guest({self.spec.name} {self.host}:{self.port})"


class FaultNotSupported(NotImplementedError):
    """The backend cannot inject this fault (the message says why)."""


@dataclass
class RunContext:
    """What a backend gets from the lab: the run's identity, journal and directories."""

    run_id: str
    state: RunState
    run_dir: Path
    client_public_key: str
    on_phase: PhaseHook = lambda name, phase, a, b: None
    #: Called by ``up`` as soon as a guest is started, so that the lab waits for it to answer
    #: while the others are still being started; a backend that never calls it has its
    #: guests waited for after ``up`` returns.
    on_started: Callable[[Guest], None] = lambda guest: None
    upper: str = "tmpfs"
    options: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    name: str = ""
    #: Faults this backend can inject, e.g. {"kill", "pause", "isolate", "bandwidth"}.
    faults: frozenset[str] = frozenset()
    #: Whether bringing guests up needs root on this host.
    requires_root: bool = True
    #: MAC OUI the backend wants (None: locally administered).
    mac_oui: tuple[int, int, int] | None = None

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.options = dict(options or {})
        self.guests: list[Guest] = []

    @abc.abstractmethod
    def check(self, image: Image, n_guests: int) -> None:
        """Raise UserError if this backend cannot run ``n_guests`` of ``image`` here."""

    @abc.abstractmethod
    def prepare(self, image: Image, ctx: RunContext) -> None:
        """Once per run, before ``up``: shared resources (bridge, image mount...)."""

    @abc.abstractmethod
    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        """Start the guests (in parallel); return as soon as each is started, not ready."""

    @abc.abstractmethod
    def down(self) -> list[str]:
        """Take everything down; idempotent, never raises; returns problems met."""

    def describe(self) -> dict[str, Any]:
        """What run.json records about this backend."""
        return {"name": self.name, "options": self.options, "faults": sorted(self.faults)}

    def guest_memory(self, guest: Guest) -> int | None:
        """Bytes of memory the guest uses now, when the backend can tell."""
        return None

    def upper_bytes(self, guest: Guest) -> int | None:
        """Bytes used by the guest's copy-on-write layer, when the backend can tell."""
        return None

    def dead(self, guest: Guest) -> str | None:
        """Why ``guest`` can no longer come up (its process has exited), or None.

        The readiness wait asks between attempts, so a guest that died while booting
        fails at once instead of after the whole ``--ready-timeout``.
        """
        return None

    # -- fault hooks used by the nemesis ------------------------------------------------

    def kill(self, guest: Guest) -> None:
        raise FaultNotSupported(f"{self.name}: kill is not supported")

    def pause(self, guest: Guest) -> None:
        raise FaultNotSupported(f"{self.name}: pause is not supported")

    def resume(self, guest: Guest) -> None:
        raise FaultNotSupported(f"{self.name}: resume is not supported")

    def isolate(self, guests: Sequence[Guest], others: Sequence[Guest] | None = None) -> None:
        raise FaultNotSupported(f"{self.name}: isolate is not supported")

    def heal(self) -> None:
        raise FaultNotSupported(f"{self.name}: heal is not supported")

    def limit_bandwidth(self, guest: Guest, rate: str) -> None:
        raise FaultNotSupported(f"{self.name}: bandwidth limits are not supported")

    def unlimit_bandwidth(self, guest: Guest) -> None:
        raise FaultNotSupported(f"{self.name}: bandwidth limits are not supported")

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


def now_ns() -> int:
    return time.time_ns()
