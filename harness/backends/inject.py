"""The one fault dispatcher: a fault action on some guests, through a backend's capability.

The nemesis, ``scalelab fault``, the cluster's backend and each shard all call
:func:`inject`, so a fault means the same thing wherever it is asked for, and a backend that
cannot do it says so the same way (``FaultNotSupported`` naming what it can do).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NoReturn

from harness.backends.base import (
    FAULT_CAPABILITIES,
    Backend,
    CanDegrade,
    CanIsolate,
    CanKill,
    CanLimitBandwidth,
    CanPartition,
    CanPause,
    FaultNotSupported,
    Guest,
    GuestShell,
)
from harness.degrade import Shaping
from harness.errors import LabError


class FaultAction(StrEnum):
    KILL = "kill"
    PAUSE = "pause"
    RESUME = "resume"
    ISOLATE = "isolate"
    PARTITION = "partition"
    HEAL = "heal"
    LIMIT = "limit"
    UNLIMIT = "unlimit"
    DEGRADE = "degrade"
    RESTORE = "restore"


#: The fault kind (``Backend.faults``) each action belongs to.
KIND = {
    FaultAction.KILL: "kill", FaultAction.PAUSE: "pause", FaultAction.RESUME: "pause",
    FaultAction.ISOLATE: "isolate", FaultAction.PARTITION: "partition",
    FaultAction.LIMIT: "bandwidth", FaultAction.UNLIMIT: "bandwidth",
    FaultAction.DEGRADE: "degrade", FaultAction.RESTORE: "degrade",
}


def no_shell(guest: Guest, script: str) -> str:
    """The shell of a caller without connections to the guests (a backend that shapes
    from the host side never calls it)."""
    raise LabError(f"{guest.name}: this backend shapes traffic inside the guest, and this "
                   "caller has no connection to it (use the nemesis in a test)")

def refuse(backend: Backend, kind: str) -> NoReturn:
    raise FaultNotSupported(
        f"the {backend.name} backend cannot inject '{kind}' faults "
        f"(it supports: {', '.join(sorted(backend.faults)) or 'none'})"
    )


def require(backend: Backend, kind: str) -> None:
    """FaultNotSupported unless ``backend`` declares and implements faults of ``kind``."""
    if kind not in backend.faults or not isinstance(backend, FAULT_CAPABILITIES[kind]):
        refuse(backend, kind)


def inject(backend: Backend, action: FaultAction | str, guests: Sequence[Guest], *,
           others: Sequence[Guest] = (), rate: str = "", shaping: Sequence[Shaping] = (),
           shell: GuestShell = no_shell) -> None:
    """Do ``action`` to ``guests`` (``others``: the far side of a partition; ``rate``: the
    bandwidth limit; ``shaping``: each guest's whole set of network conditions, run by
    ``shell`` inside it where needed). ``heal`` undoes every isolation and partition of the
    lab; ``restore`` the guests' network conditions."""
    action = FaultAction(action)
    if action is FaultAction.HEAL:
        if not (backend.faults & {"isolate", "partition"}
                and isinstance(backend, CanIsolate | CanPartition)):
            raise FaultNotSupported(f"the {backend.name} backend cannot isolate or partition: "
                                    "it has nothing to heal")
        backend.heal()
        return
    kind = KIND[action]
    require(backend, kind)
    # require() has checked the capability; the isinstance checks below narrow the type.
    if action is FaultAction.ISOLATE and isinstance(backend, CanIsolate):
        backend.isolate(guests)
    elif action is FaultAction.PARTITION and isinstance(backend, CanPartition):
        backend.partition(guests, others)
    elif action is FaultAction.PAUSE and isinstance(backend, CanPause):
        for g in guests:
            backend.pause(g)
    elif action is FaultAction.RESUME and isinstance(backend, CanPause):
        for g in guests:
            backend.resume(g)
    elif action is FaultAction.LIMIT and isinstance(backend, CanLimitBandwidth):
        for g in guests:
            backend.limit_bandwidth(g, rate)
    elif action is FaultAction.UNLIMIT and isinstance(backend, CanLimitBandwidth):
        for g in guests:
            backend.unlimit_bandwidth(g)
    elif action is FaultAction.DEGRADE and isinstance(backend, CanDegrade):
        for g in guests:
            backend.shape(g, shaping, shell)
    elif action is FaultAction.RESTORE and isinstance(backend, CanDegrade):
        for g in guests:
            backend.shape(g, (), shell)
    elif action is FaultAction.KILL and isinstance(backend, CanKill):
        for g in guests:
            backend.kill(g)
