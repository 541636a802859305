"""The lab-host side of a cluster lab: a shard is a Dask actor that owns a real harness lab.

Created by the client with ``client.submit(Shard, spec, actor=True, workers=[addr])``.  Its
methods are coroutines run on the worker's event loop; anything that blocks goes to the
shard's own thread pool, so a long fan-out never delays a clock probe or a progress poll.
A shard takes its lab down when told to, when its actor is released (the client went
away) and when its worker process exits — unless the lab was kept.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from harness.backends.base import HasFootprint, HasHostBridge, HasTelemetry
from harness.backends.inject import FaultAction, inject
from harness.cluster.shardlab import ShardLab, ShardSpec, ShardStore
from harness.cluster.wire import (
    ShardError,
    Upload,
    guest_to_wire,
    identity_of,
    loads_function,
)
from harness.errors import LabError, UserError
from harness.image import cache
from harness.ssh import FanOut, GroupResult
from harness.store import Context
from harness.telemetry.hostside import host_samples
from harness.telemetry.sample import Sample

T = TypeVar("T")


# -- the actor -----------------------------------------------------------------------------


class _Holder:
    """The shard's lab, apart from the actor so a finalizer can stop it without the actor."""

    def __init__(self) -> None:
        self.lab: ShardLab | None = None
        self.store: ShardStore | None = None
        self.kept = False
        self.lock = threading.Lock()

    def stop(self) -> list[str]:
        with self.lock:
            lab, self.lab = self.lab, None
            if lab is None or self.kept:
                return []
        problems = lab.stop()
        if self.store is not None:
            self.store.close()
        return problems


class Shard:
    """One shard of a cluster lab on one lab host (a Dask actor; see the module doc)."""

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"shard{spec.index}")
        self._holder = _Holder()
        self._closed = False
        # Runs when the actor is released (client gone) or at interpreter exit.
        self._finalizer = weakref.finalize(self, self._holder.stop)

    # -- plumbing ------------------------------------------------------------------------

    async def _offload(self, func: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise LabError(f"shard {self.spec.run_id} is stopped")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(_guarded, func, *args))

    def _lab(self) -> ShardLab:
        lab = self._holder.lab
        if lab is None:
            raise LabError(f"shard {self.spec.run_id} has no lab (stopped, or never planned)")
        return lab

    def _fleet(self) -> FanOut:
        return self._lab().require_fleet()

    # -- cheap calls, answered on the event loop -----------------------------------------

    async def now(self) -> int:
        """This host's wall clock (ns), for the client's offset estimate."""
        return time.time_ns()

    async def progress(self) -> tuple[int, int, int]:
        """(started, ready, failed) guests so far."""
        lab = self._holder.lab
        if lab is None:
            return 0, 0, 0
        return lab.counts

    async def pid(self) -> int:
        return os.getpid()

    # -- bring-up ------------------------------------------------------------------------

    async def plan(self, n: int, subnet: str) -> list[dict[str, str]]:
        return await self._offload(self._plan, n, subnet)

    def _plan(self, n: int, subnet: str) -> list[dict[str, str]]:
        spec = self.spec
        image = cache.resolve(spec.image_key)
        if spec.image_digest and image.digest != spec.image_digest:
            raise UserError(f"lab host {spec.lab_host}: image {spec.image_key} differs from "
                            "the client's (rebuild it with the same recipe)")
        context = Context(run_id=spec.main_run_id, scenario="bringup", n_guests=spec.total,
                          lab_host=spec.lab_host)
        store = ShardStore(Path(spec.run_dir), context)
        with self._holder.lock:
            self._holder.store = store
            self._holder.lab = ShardLab(spec, image, store)
        specs = self._lab().plan_shard(n, subnet)
        return [identity_of(s, spec.lab_host) for s in specs]

    async def boot(self) -> dict[str, Any]:
        return await self._offload(self._boot)

    def _boot(self) -> dict[str, Any]:
        lab = self._lab()
        guests = lab.boot_shard()
        return {
            "guests": [guest_to_wire(g) for g in guests],
            "failures": dict(lab.failures),  # GuestError pickles whole
            "seconds": lab.bringup_seconds,
            "bridge": lab.backend.bridge if isinstance(lab.backend, HasHostBridge) else None,
        }

    async def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The timing and metric rows recorded here since the last drain."""
        store = self._holder.store
        return store.drain() if store is not None else ([], [])

    # -- the lab network (see harness.cluster.overlay) -----------------------------------

    async def tunnel(self, remote_macs: dict[str, str]) -> None:
        """Make this shard's VXLAN device (before boot)."""
        await self._offload(lambda: self._lab().require_tunnel().create(remote_macs))

    async def probe(self, timeout: float) -> set[str]:
        """The peer lab hosts whose VXLAN probe frames reached this one (before boot)."""
        return await self._offload(lambda: self._lab().require_tunnel().probe(timeout))

    async def join(self) -> GroupResult:
        """The VXLAN device onto this shard's bridge, and the guests' MTU set under it."""
        return await self._offload(self._join)

    def _join(self) -> GroupResult:
        lab = self._lab()
        if not isinstance(lab.backend, HasHostBridge):
            raise LabError(f"the {lab.backend.name} backend has no lab bridge on the lab "
                           "host to join to the others")
        tunnel = lab.require_tunnel()
        tunnel.join(lab.backend.bridge)
        return lab.require_fleet().run(f"ip link set dev eth0 mtu {tunnel.overlay.mtu}",
                                       timeout=30)

    async def counters(self) -> dict[str, int]:
        """What crossed this shard's VXLAN device so far."""
        return await self._offload(lambda: self._lab().require_tunnel().counters())

    async def cut(self, side_a: list[str], side_b: list[str]) -> None:
        """This host's part of a partition between two groups of guest MACs."""
        await self._offload(lambda: self._lab().require_tunnel().cut(side_a, side_b))

    # -- use -----------------------------------------------------------------------------

    async def run(self, command: str, timeout: float | None, names: list[str]) -> GroupResult:
        return await self._offload(
            lambda: self._fleet().run(command, timeout=timeout, names=names)
        )

    async def map(self, func: bytes, names: list[str]) -> GroupResult:
        return await self._offload(
            lambda: self._fleet().map(loads_function(func), names)
        )

    async def put(self, upload: Upload, remote: str, mode: int | None,
                  names: list[str]) -> GroupResult:
        return await self._offload(self._put, upload, remote, mode, names)

    def _put(self, upload: Upload, remote: str, mode: int | None, names: list[str]) -> GroupResult:
        lab = self._lab()
        where = lab.state.dir if lab.state is not None else None
        tmp = Path(tempfile.mkdtemp(prefix="upload-", dir=where))
        try:
            local = upload.write(tmp)
            return self._fleet().put(local, remote, mode=mode, names=names)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    async def sample(self, names: list[str], slow: bool) -> tuple[int, list[Sample]]:
        """This lab host's round: when it was taken (this host's clock), the host's own
        samples (guest "") and those of its live guests among ``names``."""
        return await self._offload(self._sample, names, slow)

    def _sample(self, names: list[str], slow: bool) -> tuple[int, list[Sample]]:
        now, lab, wanted = time.time_ns(), self._lab(), set(names)
        out = host_samples()
        if isinstance(lab.backend, HasTelemetry):
            out += lab.backend.sample([g for g in lab.live_guests() if g.name in wanted],
                                      slow=slow)
        return now, out

    async def footprint(self, names: list[str]) -> dict[str, dict[str, tuple[float, str]]]:
        return await self._offload(self._footprint, names)

    def _footprint(self, names: list[str]) -> dict[str, dict[str, tuple[float, str]]]:
        lab = self._lab()
        if not isinstance(lab.backend, HasFootprint):
            return {}
        wanted = set(names)
        return lab.backend.footprint([g for g in lab.guests if g.name in wanted])

    async def fault(self, action: str, names: list[str], arg: Any = None) -> None:
        """A nemesis fault on guests of this shard (through its own backend)."""
        await self._offload(self._fault, action, names, arg)

    def _fault(self, action: str, names: list[str], arg: Any) -> None:
        lab = self._lab()
        by_name = {g.name: g for g in lab.guests}
        guests = [by_name[n] for n in names]
        others = [by_name[n] for n in arg] if action == FaultAction.PARTITION else []
        if action == FaultAction.HEAL and lab.tunnel is not None:
            lab.tunnel.mend()
        inject(lab.backend, action, guests, others=others,
               rate=str(arg) if action == FaultAction.LIMIT else "")
        if action == FaultAction.KILL:
            for g in guests:
                self._lose(g.name)

    def _lose(self, name: str) -> None:
        self._fleet().lose(name)

    # -- the end -------------------------------------------------------------------------

    async def keep(self) -> None:
        """Leave this shard's guests up after the client and the worker are gone."""
        await self._offload(self._keep)

    def _keep(self) -> None:
        with self._holder.lock:
            self._holder.kept = True
            lab = self._holder.lab
        if lab is not None:
            lab.keep()

    async def stop(self) -> list[str]:
        """Take this shard's lab down; idempotent. Returns the problems met."""
        if self._closed:
            return []
        problems = await self._offload(self._holder.stop)
        self._closed = True
        self._pool.shutdown(wait=False)
        return problems


def _guarded(func: Callable[..., T], *args: Any) -> T:
    """Run ``func``; an unexpected exception comes back as a ShardError with its text."""
    try:
        return func(*args)
    except (UserError, LabError, ShardError):
        raise
    except Exception as exc:
        raise ShardError(f"{type(exc).__name__}: {exc}") from None
