"""The lab-host side of a cluster lab: a shard is a Dask actor that owns a real harness lab.

Created by the client with ``client.submit(Shard, spec, actor=True, workers=[addr])``.  Its
methods are coroutines run on the worker's event loop; anything that blocks goes to the
shard's own thread pool, so a long fan-out never delays a clock probe or a progress poll.
A shard takes its lab down when told to, when its actor is released (the client went
away) and when its worker process exits — unless the lab was kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import os
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.backends.base import Guest, HasFootprint, HasHostBridge, RunContext
from harness.backends.inject import FaultAction, inject
from harness.cluster.wire import (
    ShardError,
    Upload,
    WireGroup,
    guest_to_wire,
    identity_of,
    loads_function,
    to_wire,
)
from harness.config import LabConfig
from harness.errors import LabError, UserError
from harness.identity import (
    GuestSpec,
    KeyPair,
    choose_subnet,
    host_routes,
    mac_for,
    machine_id_for,
    make_specs,
    preflight,
    run_tag,
)
from harness.image import cache
from harness.lab import Lab
from harness.plumbing import nft
from harness.ssh import Fleet, write_client_key
from harness.state import RunState
from harness.store import Context, Store

T = TypeVar("T")


# -- facts about a lab host ----------------------------------------------------------------


def machine_id() -> str:
    """This host's /etc/machine-id (its hostname when there is none)."""
    try:
        return Path("/etc/machine-id").read_text().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()


def host_facts(image_key: str, digest: str | None) -> dict[str, Any]:
    """What the client must know about a lab host before placing a shard on it.

    Run on each worker by ``client.run``: hostname, machine-id, effective uid, routes, the
    lab host's own SSH host key (for ProxyJump) and whether the image is there.
    """
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "machine_id": machine_id(),
        "euid": os.geteuid(),
        "routes": [str(r) for r in host_routes()],
        "ssh_host_key": _ssh_host_key(),
        "image": None,
        "image_error": None,
    }
    try:
        image = cache.resolve(image_key)
        image.check()
        if digest and image.digest != digest:
            raise UserError(f"image {image_key} here is {image.digest[:19]}…, not {digest[:19]}…")
        facts["image"] = {"key": image.key, "digest": image.digest, "manifest": image.manifest}
    except (UserError, OSError) as err:
        facts["image_error"] = str(err)
    return facts


def _ssh_host_key() -> str | None:
    try:
        return " ".join(Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])
    except OSError:
        return None


# -- the shard's lab -----------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSpec:
    """Everything a shard needs from the client (sent once, when the actor is made)."""

    index: int
    run_id: str  # the shard's own run id: <cluster run id>-s<index>
    main_run_id: str
    lab_host: str
    config: LabConfig
    run_dir: str
    image_key: str
    image_digest: str | None
    client_key: KeyPair = field(repr=False)
    offset: int  # the global index of this shard's first guest
    total: int  # guests in the whole cluster lab
    run: str  # the run the cluster lab belongs to
    lab: str  # the cluster lab's name in that run
    name_prefix: str  # what this shard's guest names start with (unique in the run)


class ShardStore(Store):
    """The shard's own timing store (in its run directory) that also keeps the rows it has
    not handed to the client yet."""

    def __init__(self, run_dir: Path, context: Context) -> None:
        super().__init__(run_dir, context)
        self._buf_lock = threading.Lock()
        self._timing_rows: list[dict[str, Any]] = []
        self._metric_rows: list[dict[str, Any]] = []

    def add_timing(self, row: Mapping[str, Any]) -> None:
        super().add_timing(row)
        with self._buf_lock:
            self._timing_rows.append(dict(row))

    def add_metric(self, row: Mapping[str, Any]) -> None:
        super().add_metric(row)
        with self._buf_lock:
            self._metric_rows.append(dict(row))

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._buf_lock:
            out = (self._timing_rows, self._metric_rows)
            self._timing_rows, self._metric_rows = [], []
        return out


class ShardLab(Lab):
    """A harness lab whose bring-up is split in two: ``plan`` (identities, checked by the
    client across all shards) and ``boot`` (start, wait for SSH).  Shortfalls are reported,
    not raised: the client applies ``min_ready`` to the whole lab."""

    def __init__(self, spec: ShardSpec, image: cache.Image, store: ShardStore) -> None:
        super().__init__(spec.config, spec.run_id, Path(spec.run_dir), store.scoped(lab=spec.lab),
                         image=image, name=spec.lab, run=spec.run,
                         name_prefix=spec.name_prefix)
        self.spec = spec
        self.specs: list[GuestSpec] = []
        self._key_path: Path | None = None
        self._t0 = time.monotonic()

    def plan(self, n: int, subnet: str) -> list[GuestSpec]:
        """Journal, client key and this shard's guest specs; nothing is started yet."""
        assert self.image is not None
        self._t0 = time.monotonic()
        self._total = n
        self.backend.check(self.image, n)
        net = choose_subnet(subnet, n)  # checked against this host's own routes
        self.subnet = str(net)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState.create(
            self.run_id, kept=False, **self.journal_header(),
            cluster_run=self.spec.main_run_id, lab_host=self.spec.lab_host,
        )
        self._key_path = write_client_key(self.state.dir, self.spec.client_key)
        specs = make_specs(
            self.run_id, n, net, oui=self.backend.mac_oui, prefix=self.name_prefix,
            memory=self.config.guest_memory, cpus=self.config.guest_cpus,
        )
        self.specs = [self._global_identity(s) for s in specs]
        preflight(self.specs)
        return self.specs

    def _global_identity(self, s: GuestSpec) -> GuestSpec:
        """MAC and machine-id from the cluster run and the guest's global index."""
        i = self.spec.offset + s.index
        return dataclasses.replace(
            s, mac=mac_for(self.spec.main_run_id, i, self.backend.mac_oui),
            machine_id=machine_id_for(self.spec.main_run_id, i),
        )

    def boot(self) -> list[Guest]:
        """Start the planned guests and wait until each answers SSH (or fails)."""
        assert self.state is not None and self.image is not None and self._key_path
        specs, net = self.specs, ipaddress.IPv4Network(self.subnet or "")
        ctx = RunContext(
            run_id=self.run_id, state=self.state, run_dir=self.run_dir,
            client_public_key=self.spec.client_key.public_openssh, on_phase=self._phase,
            options={"subnet": str(net), "subnet_gateway": f"{specs[0].gateway}/{net.prefixlen}"},
        )
        clients = self._bring_up(specs, ctx, self._key_path,
                                 self.spec.client_key.private_openssh, self.spec.lab_host)
        guests = self.guests
        by_name = {g.name: g for g in guests}
        order = [g.name for g in guests if g.name in clients]
        self.fleet = Fleet({n: clients[n] for n in order}, by_name, self.config.fanout_workers)
        for name in self.failures:
            self.fleet.lost[name] = time.time_ns()
        self.bringup_seconds = time.monotonic() - self._t0
        self._record_footprint()
        return guests

    def _start(self, n: int, min_ready: float, t0: float) -> list[Guest]:
        self.plan(n, self.config.subnet or "")
        guests = self.boot()
        if len(self.require_fleet().names) < min_ready * n:
            raise LabError(f"{len(self.failures)} of {n} guests did not come up")
        return guests


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

    def _fleet(self) -> Fleet:
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
        s = lab._stats
        return s.started, s.ready, s.failed

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
        specs = self._lab().plan(n, subnet)
        return [identity_of(s, spec.lab_host) for s in specs]

    async def boot(self) -> dict[str, Any]:
        return await self._offload(self._boot)

    def _boot(self) -> dict[str, Any]:
        lab = self._lab()
        guests = lab.boot()
        return {
            "guests": [guest_to_wire(g) for g in guests],
            "failures": {n: (e.error_class, e.message) for n, e in lab.failures.items()},
            "seconds": lab.bringup_seconds,
            "bridge": lab.backend.bridge if isinstance(lab.backend, HasHostBridge) else None,
        }

    async def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The timing and metric rows recorded here since the last drain."""
        store = self._holder.store
        return store.drain() if store is not None else ([], [])

    async def link(self, peers: list[str]) -> WireGroup:
        """Let this shard's guests reach the subnets ``peers`` of shards on this host."""
        return await self._offload(self._link, peers)

    def _link(self, peers: list[str]) -> WireGroup:
        lab = self._lab()
        if not isinstance(lab.backend, HasHostBridge) or lab.state is None:
            raise LabError(f"the {lab.backend.name} backend has no host bridge to route through")
        bridge = lab.backend.bridge
        table = f"slf-{run_tag(lab.run_id)}"
        lab.state.record("nft", family="inet", table=table)
        # Its own subnet too: with br_netfilter, traffic bridged between two guests of
        # this shard passes the forward hook as well.
        allowed = [str(lab.subnet), *peers]
        nft.apply(nft.forward_only_to(table, bridge, allowed))
        Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").write_text("1\n")
        gateway = lab.specs[0].gateway
        routes = "; ".join(f"ip route replace {p} via {gateway}" for p in peers)
        return to_wire(lab.require_fleet().run(f"set -e; {routes}", timeout=30))

    # -- use -----------------------------------------------------------------------------

    async def run(self, command: str, timeout: float | None, names: list[str]) -> WireGroup:
        return await self._offload(
            lambda: to_wire(self._fleet().run(command, timeout=timeout, names=names))
        )

    async def map(self, func: bytes, names: list[str]) -> WireGroup:
        return await self._offload(
            lambda: to_wire(self._fleet().map(loads_function(func), names))
        )

    async def put(self, upload: Upload, remote: str, mode: int | None,
                  names: list[str]) -> WireGroup:
        return await self._offload(self._put, upload, remote, mode, names)

    def _put(self, upload: Upload, remote: str, mode: int | None, names: list[str]) -> WireGroup:
        lab = self._lab()
        where = lab.state.dir if lab.state is not None else None
        tmp = Path(tempfile.mkdtemp(prefix="upload-", dir=where))
        try:
            local = upload.write(tmp)
            return to_wire(self._fleet().put(local, remote, mode=mode, names=names))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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
        inject(lab.backend, action, guests, others=others,
               rate=str(arg) if action == FaultAction.LIMIT else "")
        if action == FaultAction.KILL:
            for g in guests:
                self._lose(g.name)

    def _lose(self, name: str) -> None:
        fleet = self._fleet()
        fleet.lost.setdefault(name, time.time_ns())
        client = fleet.clients.get(name)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

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
