"""One domU of a run: its xl config from the options and the guest's spec, how the backend
tracks it, and ``xl create`` with its one retry."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from harness.backends.base import Guest
from harness.backends.xen.cleanup import destroy_on, loops_on, release_on
from harness.backends.xen.dom0 import CREATE_TIMEOUT, TRANSIENT, Dom0
from harness.backends.xen.options import XenOptions
from harness.backends.xen.xlconfig import (
    DomainConfig,
    disk_spec,
    domain_name,
    guest_cmdline,
    vif_spec,
)
from harness.errors import LabError
from harness.identity import GuestSpec
from harness.plumbing.units import parse_size


@dataclass
class Domain:
    """A domU this run created: its files on dom0, its domid and loop devices once known."""

    guest: str
    name: str
    cfg: str
    disk: str
    domid: int | None = None
    loops: list[list[str]] = field(default_factory=list)
    retries: int = 0
    #: ``time.monotonic()`` when ``xl create`` returned: a listing older than this cannot
    #: tell whether the domU died.
    created_at: float = 0.0
    #: The guest announced to the lab (``on_started``) as soon as the domU was created.
    started: Guest | None = None


def _mib(size: str) -> int:
    return max(32, parse_size(size, "memory size") >> 20)


def domain_config(spec: GuestSpec, opts: XenOptions, files: dict[str, str], run_id: str,
                  disk: str) -> DomainConfig:
    """The domU of ``spec``: the bundle's kernel and initramfs (``files`` on dom0), the shared
    image read-only and ``disk`` writable; the guest's own cpus/memory over the options'."""
    vcpus = max(1, math.ceil(spec.cpus)) if spec.cpus else opts.vcpus
    memory = _mib(spec.memory) if spec.memory else opts.memory_mib
    return DomainConfig(
        name=domain_name(run_id, spec.name),
        guest=spec.name,
        run_id=run_id,
        kernel=files["vmlinuz"],
        ramdisk=files["initrd.img"],
        extra=guest_cmdline(spec, systemd=opts.init == "systemd",
                            dhcp=opts.addressing == "dhcp", extra=opts.cmdline),
        memory_mib=memory,
        vcpus=vcpus,
        disks=(
            disk_spec("xvda", "ro", files["base.img"]),
            disk_spec("xvdb", "rw", disk),
        ),
        vifs=(vif_spec(spec.mac, opts.bridge),),
    )


class CreateFailed(Exception):
    """``xl create`` of one domU failed (after its retry, if the failure was transient)."""

    def __init__(self, guest: str, domain: str, message: str) -> None:
        super().__init__(f"{domain}: {message}")
        self.guest, self.domain, self.message = guest, domain, message


def xl_create(d: Dom0, guest: str, name: str, cfg_path: str, files: list[str]) -> int:
    """``xl create`` the domU ``name``, once more when libxl's failure was transient (a slow
    hotplug script on a loaded dom0); returns how many retries it took."""
    before = {dev for dev, _ in loops_on(d, files)}
    for attempt in (1, 2):
        res = d.run(["xl", "create", cfg_path], timeout=CREATE_TIMEOUT)
        if res.ok:
            return attempt - 1
        # Take down what xl may have left, and the loop devices it attached for this
        # attempt (libxl does not always detach them when a hotplug script failed).
        with contextlib.suppress(LabError):
            destroy_on(d, name)
            stray = [[dev, f] for dev, f in loops_on(d, files) if dev not in before]
            if stray:
                release_on(d, stray)
        if attempt == 2 or not any(m in res.stderr for m in TRANSIENT):
            raise CreateFailed(guest, name, res.message())
    raise AssertionError("not reached: the second attempt returns or raises")
