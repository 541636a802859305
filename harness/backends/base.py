"""The backend contract: turn a list of GuestSpec into running guests and take them down.

``Backend`` is what every backend does (check, prepare, up, down, dead) and what it states
about itself (``needs_vm_image``, ``requires_root``, ``mac_oui``, ``faults``).  What only some
backends can do is a capability: a small runtime-checkable ``Protocol`` below (kill, pause,
isolate, partition, bandwidth, footprint, jump hosts, a host bridge).  Callers ask
``isinstance(backend, CanPause)``, never ``getattr``; a new capability is a new Protocol here.

Modelled on testinfra's registry (scheme → dotted path, imported lazily), enoslib's provider
lifecycle (``up``/``down``, usable as a context manager) and pytest-xdist's typed Protocols.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import paramiko

from harness.degrade import Shaping
from harness.identity import GuestSpec
from harness.image.cache import Image
from harness.state import RunState
from harness.telemetry.sample import HostRound, Sample

#: Called by a backend as each guest passes a phase: (guest name, phase, start_ns, end_ns).
PhaseHook = Callable[[str, str, int, int], None]
#: Runs a shell script in a guest over its control connection; its stdout, or a LabError.
GuestShell = Callable[["Guest", str], str]


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
    #: Faults this backend declares, e.g. {"kill", "pause", "isolate", "bandwidth"}; each
    #: is one of FAULT_CAPABILITIES and the class implements that Protocol (a test checks).
    faults: frozenset[str] = frozenset()
    #: Whether bringing guests up needs root on this host.
    requires_root: bool = True
    #: Whether guests boot a kernel: the image must carry a kernel and an initramfs.
    needs_vm_image: bool = False
    #: MAC OUI the backend wants (None: locally administered).
    mac_oui: tuple[int, int, int] | None = None
    #: Whether the guests' processes take this host's memory as they run (netns), rather
    #: than the memory of VMs sized at start: decides ``--sessions=auto``.
    guests_in_host_memory: bool = True

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.options = dict(options or {})
        self.guests: list[Guest] = []

    @abc.abstractmethod
    def check(self, image: Image, n_guests: int) -> None:
        """Raise UserError if this backend cannot run ``n_guests`` of ``image`` here."""

    @abc.abstractmethod
    def prepare(self, image: Image, ctx: RunContext) -> object:
        """Once per run, before ``up``: shared resources (bridge, image mount...).

        Returns the backend's per-run context (names, places, connections of this run, with
        nothing left None), which the backend also keeps for ``up``, ``down`` and faults."""

    @abc.abstractmethod
    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        """Start the guests (in parallel); return as soon as each is started, not ready."""

    @abc.abstractmethod
    def down(self) -> list[str]:
        """Take everything down; idempotent, never raises; returns problems met."""

    def describe(self) -> dict[str, Any]:
        """What run.json records about this backend."""
        return {"name": self.name, "options": self.options, "faults": sorted(self.faults)}

    def dead(self, guest: Guest) -> str | None:
        """Why ``guest`` can no longer come up (its process has exited), or None.

        The readiness wait asks between attempts, so a guest that died while booting
        fails at once instead of after the whole ``--ready-timeout``.
        """
        return None

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


# -- capabilities: what only some backends can do ---------------------------------------------


@runtime_checkable
class CanKill(Protocol):
    def kill(self, guest: Guest) -> None:
        """Kill the guest outright (it is lost for the rest of the run)."""


@runtime_checkable
class CanPause(Protocol):
    def pause(self, guest: Guest) -> None:
        """Freeze every process of the guest, keeping its state and sockets."""

    def resume(self, guest: Guest) -> None: ...


@runtime_checkable
class CanIsolate(Protocol):
    def isolate(self, guests: Sequence[Guest]) -> None:
        """Cut the guests off the lab network (the host loses them too)."""

    def heal(self) -> None:
        """Undo every isolation and partition of the lab."""


@runtime_checkable
class CanPartition(Protocol):
    def partition(self, side_a: Sequence[Guest], side_b: Sequence[Guest]) -> None:
        """Drop traffic between two groups; each still talks inside, the host to both."""

    def heal(self) -> None: ...


@runtime_checkable
class CanLimitBandwidth(Protocol):
    def limit_bandwidth(self, guest: Guest, rate: str) -> None:
        """Limit the guest's traffic both ways to ``rate`` (tc's syntax: 1mbit)."""

    def unlimit_bandwidth(self, guest: Guest) -> None: ...


@runtime_checkable
class CanDegrade(Protocol):
    def shape(self, guest: Guest, rules: Sequence[Shaping], shell: GuestShell) -> None:
        """Make ``rules`` the whole of the network conditions on what ``guest`` sends to
        other guests (none: restored), never on its control connection; ``shell`` runs
        commands inside the guest where that is where the shaping lives."""


#: Footprint values: guest → metric → (value, unit).
Footprint = dict[str, dict[str, tuple[float, str]]]


@runtime_checkable
class HasFootprint(Protocol):
    def footprint(self, guests: Sequence[Guest]) -> Footprint:
        """What each guest costs the host now (memory, copy-on-write bytes)."""


@runtime_checkable
class HasTelemetry(Protocol):
    def sample(self, guests: Sequence[Guest], *, slow: bool = False) -> list[Sample]:
        """What each guest spends now, read from the host side: CPU seconds, memory,
        processes, bytes and packets on its link (counters as counters); with ``slow`` the
        costlier ones too (bytes in its copy-on-write layer)."""


@runtime_checkable
class HasHostTelemetry(Protocol):
    def sample_hosts(self, guests: Sequence[Guest], *, slow: bool = False) -> list[HostRound]:
        """Guests spread over lab hosts (a cluster lab): each lab host samples itself and
        its own guests, as one lab host's :class:`HasTelemetry` and host side would, and
        its round comes back stamped with its time on the run's clock."""


@runtime_checkable
class HasJumpHosts(Protocol):
    """Guests reached through jump hosts (xen's dom0): their open connections, set by
    ``prepare`` and read by the readiness wait."""

    jump_clients: dict[Jump, paramiko.SSHClient]


@runtime_checkable
class HasHostBridge(Protocol):
    """Guests on a Linux bridge of this host (netns, qemu taps): the cluster routes between
    the shards of one host through it."""

    bridge: str


@runtime_checkable
class CanAttach(Protocol):
    """A lab left up (``scalelab up``, ``--keep-guests``) can be reached again from its
    journal and ``guests.json``, for ``scalelab fault``."""

    @classmethod
    def attach(cls, state: RunState, lab_dir: Path, inventory: Mapping[str, Any]) -> Backend:
        """A handle on the kept lab, able to inject faults into its guests."""
        ...


#: Fault kind (as in ``Backend.faults``) → the capability that injects it.
FAULT_CAPABILITIES: dict[str, type] = {
    "kill": CanKill,
    "pause": CanPause,
    "isolate": CanIsolate,
    "partition": CanPartition,
    "bandwidth": CanLimitBandwidth,
    "degrade": CanDegrade,
}


def capable_faults(cls: type[Backend]) -> frozenset[str]:
    """The fault kinds whose capability the backend class ``cls`` implements."""
    return frozenset(k for k, proto in FAULT_CAPABILITIES.items() if issubclass(cls, proto))


def now_ns() -> int:
    return time.time_ns()
