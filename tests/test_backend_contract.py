"""The backend contract, checked without root: what each backend declares is what it does."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from harness.backends import BACKENDS, backend_class, parse_backend
from harness.backends.base import (
    Backend,
    CanKill,
    CanLimitBandwidth,
    CanPartition,
    FaultNotSupported,
    Guest,
    HasFootprint,
    capable_faults,
)
from harness.backends.inject import FaultAction, inject, require
from harness.identity import GuestSpec
from harness.image.cache import Image


@pytest.mark.parametrize("scheme", sorted(BACKENDS))
def test_declared_faults_are_the_implemented_capabilities(scheme: str) -> None:
    cls = backend_class(parse_backend(scheme))
    assert cls.faults == capable_faults(cls), cls
    assert cls.name == scheme


@pytest.mark.parametrize(("scheme", "vm"), [("netns", False), ("qemu", True), ("xen", True)])
def test_backends_state_what_image_they_need(scheme: str, vm: bool) -> None:
    assert backend_class(parse_backend(scheme)).needs_vm_image is vm


def test_capabilities_of_the_backends() -> None:
    netns, qemu, xen = (backend_class(parse_backend(s)) for s in ("netns", "qemu", "xen"))
    assert all(issubclass(c, HasFootprint) and issubclass(c, CanKill) for c in (netns, qemu, xen))
    assert issubclass(netns, CanLimitBandwidth) and not issubclass(qemu, CanLimitBandwidth)
    assert issubclass(qemu, CanPartition) and not issubclass(xen, CanPartition)


class _KillOnly(Backend):
    """A backend that can only kill: the dispatcher must refuse everything else by name."""

    name = "killonly"
    faults = frozenset({"kill"})

    def __init__(self) -> None:
        super().__init__()
        self.killed: list[str] = []

    def check(self, image: Image, n_guests: int) -> None: ...
    def prepare(self, image: Image, ctx: object) -> None: ...
    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        return []

    def down(self) -> list[str]:
        return []

    def kill(self, guest: Guest) -> None:
        self.killed.append(guest.name)


def test_the_dispatcher_does_what_is_declared_and_refuses_the_rest() -> None:
    import ipaddress

    from harness.identity import make_specs

    spec = make_specs("r", 1, ipaddress.IPv4Network("10.9.0.0/29"))[0]
    b, g = _KillOnly(), Guest(spec, spec.address)
    inject(b, FaultAction.KILL, [g])
    assert b.killed == [g.name]
    for action in ("pause", "isolate", "partition", "limit", "heal"):
        with pytest.raises(FaultNotSupported, match="killonly"):
            inject(b, action, [g], others=[g], rate="1mbit")
    with pytest.raises(FaultNotSupported, match=r"supports: kill\)"):
        require(b, "bandwidth")
    with pytest.raises(ValueError):
        inject(b, "explode", [g])
