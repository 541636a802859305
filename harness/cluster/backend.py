"""``ClusterBackend``: what ``lab.backend`` is in a cluster lab.  It names the backend the
shards run (netns by default) and sends the nemesis's faults and footprint questions to the
shard that holds each guest, and samples each lab host's resources there (rows carry the lab
host, their time put on our clock); bringing guests up is the shards' own business.

A partition between guests on different lab hosts is applied on every lab host holding
either side (by MAC, see ``harness.cluster.tunnel``); isolating a guest cuts it off its own
lab host's bridge, and with it off the whole lab network.

It has every fault capability's methods (each forwards to a shard, where the one dispatcher,
``harness.backends.inject``, applies it to the real backend) but declares only the faults of
the backend its shards run, so the dispatcher refuses the others here already."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.backends.base import Backend, FaultNotSupported, Guest
from harness.backends.inject import FaultAction
from harness.cluster.connect import ShardHandle
from harness.errors import LabError
from harness.identity import GuestSpec
from harness.image.cache import Image
from harness.telemetry.sample import HostRound


class ClusterBackend(Backend):
    def __init__(self, inner: Backend, routes: dict[str, ShardHandle]) -> None:
        super().__init__(inner.options)
        self.inner = inner
        self.routes = routes  # guest name → shard (filled by the lab at bring-up)
        self.name = inner.name
        self.faults = inner.faults
        self.requires_root = inner.requires_root
        self.needs_vm_image = inner.needs_vm_image
        self.guests_in_host_memory = inner.guests_in_host_memory
        self.mac_oui = inner.mac_oui
        #: Whether the lab hosts are joined into one lab network (set at bring-up).
        self.joined = False
        #: Lab host → its clock's offset from ours in seconds (measured at bring-up).
        self.clock_offsets: dict[str, float] = {}

    # -- the lifecycle is the shards' ----------------------------------------------------

    def check(self, image: Image, n_guests: int) -> None:
        """Each shard checks its own host (see ``ClusterLab``)."""

    def prepare(self, image: Image, ctx: Any) -> None:
        raise LabError("a cluster lab's guests are prepared by its shards")

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        raise LabError("a cluster lab's guests are started by its shards")

    def down(self) -> list[str]:
        return []  # ClusterLab.stop takes every shard down

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    # -- per guest, through its shard ----------------------------------------------------

    def _by_shard(self, guests: Sequence[Guest]) -> dict[ShardHandle, list[str]]:
        out: dict[ShardHandle, list[str]] = {}
        for g in guests:
            out.setdefault(self.routes[g.name], []).append(g.name)
        return out

    def footprint(self, guests: Sequence[Guest]) -> dict[str, dict[str, tuple[float, str]]]:
        """Per guest memory and copy-on-write bytes, asked of each shard for its guests."""
        result: dict[str, dict[str, tuple[float, str]]] = {}
        for shard, names in self._by_shard(guests).items():
            if not shard.lost:
                result.update(shard.footprint(names))
        return result

    def sample_hosts(self, guests: Sequence[Guest], *, slow: bool = False) -> list[HostRound]:
        """Each lab host's round (itself and its guests), on our clock: the shard's stamp
        minus its measured offset. A shard lost or failing this round gives none."""
        by_shard = self._by_shard(guests)
        for shard in {s for s in self.routes.values() if not s.lost}:
            by_shard.setdefault(shard, [])  # a lab host whose guests are all gone: itself
        out = []
        for shard, names in by_shard.items():
            if shard.lost:
                continue
            try:
                t_ns, samples = shard.sample(names, slow)
            except LabError:
                continue
            offset = self.clock_offsets.get(shard.lab_host, 0.0)
            out.append(HostRound(shard.lab_host, t_ns - round(offset * 1e9), samples))
        return out

    def _fault(self, action: FaultAction, guests: Sequence[Guest], arg: Any = None) -> None:
        for shard, names in self._by_shard(guests).items():
            shard.fault(str(action), names, arg)

    def kill(self, guest: Guest) -> None:
        self._fault(FaultAction.KILL, [guest])

    def pause(self, guest: Guest) -> None:
        self._fault(FaultAction.PAUSE, [guest])

    def resume(self, guest: Guest) -> None:
        self._fault(FaultAction.RESUME, [guest])

    def limit_bandwidth(self, guest: Guest, rate: str) -> None:
        self._fault(FaultAction.LIMIT, [guest], rate)

    def unlimit_bandwidth(self, guest: Guest) -> None:
        self._fault(FaultAction.UNLIMIT, [guest])

    def isolate(self, guests: Sequence[Guest]) -> None:
        self._fault(FaultAction.ISOLATE, guests)

    def partition(self, side_a: Sequence[Guest], side_b: Sequence[Guest]) -> None:
        """On one lab network (``joined``), by MAC on every lab host with a guest of either
        side, so it holds wherever they run; else through the one lab host of both sides."""
        shards = set(self._by_shard([*side_a, *side_b]))
        if self.joined:
            macs_a, macs_b = [g.spec.mac for g in side_a], [g.spec.mac for g in side_b]
            for shard in shards:
                shard.cut(macs_a, macs_b)
            return
        if len(shards) != 1:
            raise FaultNotSupported("a partition across lab hosts needs them joined into one "
                                    "lab network: both sides must be guests of one lab host")
        shards.pop().fault(str(FaultAction.PARTITION), [g.name for g in side_a],
                          [g.name for g in side_b])

    def heal(self) -> None:
        for shard in {s for s in self.routes.values() if not s.lost}:
            shard.fault(str(FaultAction.HEAL), [], None)
