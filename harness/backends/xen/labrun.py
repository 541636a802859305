"""``XenRun``: what one run of the xen backend is made of once ``prepare`` has set it up, so
nothing in it is ever None: the run's context, its dom0, where its files are on dom0 (the run
directory and the image bundle, as real paths), and the jump host for a remote dom0."""

from __future__ import annotations

from dataclasses import dataclass

from harness.backends.base import Jump, RunContext
from harness.backends.xen.dom0 import Dom0


@dataclass(frozen=True)
class XenRun:
    ctx: RunContext
    dom0: Dom0
    #: The run's directory on dom0 (the domUs' disks and configs).
    run_dir: str
    #: The image bundle on dom0: base.img, vmlinuz, initrd.img → real paths.
    files: dict[str, str]
    #: How a person (and the readiness wait) reaches the domUs: None for a local dom0.
    jump: Jump | None = None
