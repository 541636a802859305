"""``NetnsRun``: what one run of the netns backend is made of, known in full from the moment
``prepare`` starts (or ``attach`` reads a kept lab's journal), so nothing in it is ever None:
the run's tag and bridge, where the image and the upper layers are mounted, its cgroups, and
the name of every kernel object of a guest (15-character interface names included)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.backends.base import RunContext
from harness.backends.netns.cgroups import Cgroups
from harness.backends.netns.options import PORTS_PER_BRIDGE, NetnsOptions
from harness.identity import GuestSpec, run_tag


@dataclass(frozen=True)
class NetnsRun:
    ctx: RunContext
    tag: str
    bridge: str
    #: The image, loop-mounted read-only: every guest's lower layer.
    base: Path
    #: Where each guest's upper layer, work directory and root go (tmpfs or disk).
    rw: Path
    cgroups: Cgroups
    #: What the image starts in every guest after sshd.
    services: tuple[str, ...] = ()
    #: Guests on each bridge (see ``NetnsOptions.ports_per_bridge``).
    ports_per_bridge: int = PORTS_PER_BRIDGE

    @classmethod
    def of(cls, ctx: RunContext, opts: NetnsOptions, services: tuple[str, ...] = ()
           ) -> NetnsRun:
        tag = run_tag(ctx.run_id)
        sdir = ctx.state.dir
        rw = opts.upper_dir / ctx.run_id if opts.upper == "disk" else sdir / "rw"
        return cls(ctx, tag, opts.bridge or f"slb-{tag}", sdir / "base", rw,
                   Cgroups(ctx.run_id), services, opts.ports_per_bridge)

    def netns_name(self, spec: GuestSpec) -> str:
        return f"sl-{self.tag}-{spec.name}"

    def veth_name(self, spec: GuestSpec) -> str:
        return f"slv{self.tag}{spec.index:x}"  # at most 15 characters for 16M guests

    def segment(self, spec: GuestSpec) -> int:
        return spec.index // self.ports_per_bridge

    def segment_bridge(self, k: int) -> str:
        return self.bridge if k == 0 else f"{self.bridge}-{k}"

    def uplink(self, k: int) -> str:
        """The veth joining segment bridge ``k`` to the lab bridge."""
        return f"slu{self.tag}{k:x}"

    @property
    def bridge_mac(self) -> str:
        """The lab bridge's MAC, set when it is made: a bridge left to itself takes its
        lowest port's, which changes as guests join, and every guest pins this one (its
        gateway's neighbour entry is static)."""
        t = self.tag
        return f"06:{t[0:2]}:{t[2:4]}:{t[4:6]}:00:01"

    @property
    def mount_template(self) -> Path:
        """The mount namespace every guest's own is copied from (see ``prepare``)."""
        return self.ctx.state.dir / "ns" / "mnt"

    @property
    def nft_table(self) -> str:
        return f"slp-{self.tag}"
