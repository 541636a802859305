"""``ClusterLab``: a Lab whose guests are spread over lab hosts (see the package doc).

The client side of the cluster lab: it places shards on the lab hosts, checks identities
across all of them, brings them up in parallel, writes their rows into the run's store
with ``lab_host`` set, and hands out a :class:`ClusterFleet` that behaves like a Fleet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from harness.backends.base import Guest
from harness.cluster import connect, network
from harness.cluster.backend import ClusterBackend
from harness.cluster.connect import Connection, ShardHandle, ShardLost
from harness.cluster.fleet import ClusterFleet
from harness.cluster.hostfacts import host_facts, machine_id
from harness.cluster.overlay import Overlay
from harness.cluster.plan import (
    LabWorker,
    allocate_subnets,
    check_identities,
    clock_offset,
    lab_host_names,
    parse_cluster,
    place,
)
from harness.cluster.preflight import FACTS_TIMEOUT, check_facts, image_ref, routes_of
from harness.cluster.shard import Shard
from harness.cluster.shardlab import ShardSpec
from harness.cluster.wire import guest_from_wire
from harness.config import LabConfig
from harness.errors import LabError
from harness.identity import KeyPair
from harness.image import cache
from harness.image.ensure import ensure_image
from harness.inventory import InventoryLab, write_inventory
from harness.lab import DEFAULT_LAB, Lab, ProgressFn, name_label
from harness.ssh import write_client_key, write_exports
from harness.state import RunState
from harness.store import Recorder

T = TypeVar("T")

#: Clock probes per shard at bring-up (the median offset is kept).
CLOCK_ROUNDS = 9
#: Seconds between two progress polls of the shards during bring-up.
PROGRESS_EVERY = 0.25
#: Where a shard on another host than the client keeps its run directory.
REMOTE_SHARD_DIRS = Path("/var/lib/scalelab/shards")


class ClusterLab(Lab):
    """A lab of guests spread over the lab hosts of a Dask cluster (``--cluster``)."""

    def __init__(
        self,
        config: LabConfig,
        run_id: str,
        run_dir: Path,
        recorder: Recorder,
        *,
        progress: ProgressFn | None = None,
        image: cache.Image | None = None,
        name: str = DEFAULT_LAB,
        run: str | None = None,
        report_dir: Path | None = None,
    ) -> None:
        super().__init__(config, run_id, run_dir, recorder, progress=progress, image=image,
                         name=name, run=run, report_dir=report_dir)
        self.cluster = parse_cluster(config.cluster or "")
        self.shards: list[ShardHandle] = []
        self.routes: dict[str, ShardHandle] = {}
        self.backend = self.shards_backend = ClusterBackend(self.backend, self.routes)
        self.conn: Connection | None = None
        self.clock_offsets: dict[str, float] = {}
        self.clock_round_trips: dict[str, float] = {}
        self.network = "single lab host"
        self.overlay: Overlay | None = None
        self.connect_seconds: float | None = None
        self._boot_info: dict[ShardHandle, dict[str, Any]] = {}
        self._last_progress = (0, 0, 0)
        self._lost_lock = threading.Lock()

    # -- bring-up ------------------------------------------------------------------------

    def _start(self, n: int, min_ready: float, t0: float) -> list[Guest]:
        self._total = n
        self.conn = connect.acquire(self.cluster)
        self.connect_seconds = time.monotonic() - t0  # a LocalCluster's start, the first time
        key, digest = self._image()
        placement = place(n, self.conn.lab_workers())
        facts = self._facts([w for w, _ in placement], key, digest)
        client_key = self._journal()
        self.shards = self._make_shards(placement, facts, key, digest, client_key)
        self._measure_clocks()
        plans = self._plan_all()
        if self.overlay is not None:  # before anything boots: tunnels up, every pair seen
            network.make_tunnels(self.overlay, self.shards, plans, self._each)
            network.check_pairs(self.overlay, self._each)
        self._boot_all()
        self._collect_rows()
        if self.overlay is not None:
            network.join_all(self._each, self.failures)
        self._assemble(client_key)
        ready = len(self.require_fleet().names)
        if ready < min_ready * n or ready == 0:
            shown = "; ".join(str(e) for e in list(self.failures.values())[:3])
            raise LabError(f"{n - ready} of {n} guests did not come up: {shown}")
        self.bringup_seconds = time.monotonic() - t0
        return self.guests

    def _image(self) -> tuple[str, str | None]:
        if self.image is None and self.cluster.local:
            self.image = ensure_image(self.config, vm=self.backend.needs_vm_image)
        return image_ref(self.config, self.image)

    def _facts(self, workers: list[LabWorker], key: str, digest: str | None
               ) -> dict[str, Any]:
        assert self.conn is not None
        facts = self.conn.run(host_facts, key, digest, workers=[w.address for w in workers],
                              timeout=FACTS_TIMEOUT)
        names = lab_host_names([str(facts[w.address]["hostname"])
                                if isinstance(facts.get(w.address), dict) else w.host
                                for w in workers])
        check_facts(facts, workers, names, self.backend.requires_root, key)
        for w, name in zip(workers, names, strict=True):
            facts[w.address]["lab_host"] = name
        if self.image is None:
            manifest = facts[workers[0].address]["image"]["manifest"]
            self.image = cache.Image(key, cache.images_root() / key, manifest)
        return facts

    def _journal(self) -> KeyPair:
        """The client's own journal (its local shards, the run's client key)."""
        self.state = RunState.create(
            self.run_id, kept=False, **{**self.journal_header(), "backend": "cluster"},
            cluster=self.cluster.text,
        )
        client_key = KeyPair.generate(f"scalelab-{self.run_id}")
        write_client_key(self.state.dir, client_key)
        return client_key

    def _make_shards(self, placement: list[tuple[LabWorker, int]], facts: dict[str, Any],
                     key: str, digest: str | None, client_key: KeyPair) -> list[ShardHandle]:
        """Subnets, specs and one actor per lab host (journalled before they exist)."""
        assert self.conn is not None and self.state is not None
        sizes, here = [c for _, c in placement], machine_id()
        routes = routes_of(facts, [w for w, _ in placement])
        if len(placement) > 1:  # one lab network over the lab hosts
            alone = all(facts[w.address]["machine_id"] == here for w, _ in placement)
            self.overlay = network.decide(self.run_id, self.config.vxlan_port, placement, facts,
                                          routes, self.config.subnet,
                                          emulate_in=self.state if alone else None)
            subnets: list[Any] = list(self.overlay.blocks)
            self.shards_backend.joined = True
            self.subnet = self.overlay.subnet
            self.network = ("one L2 network: lab bridges joined by VXLAN"
                            + (" over an emulated underlay" if self.overlay.emulated else ""))
        else:
            subnets = allocate_subnets(sizes, routes, self.config.subnet)
            self.subnet = str(subnets[0])
        offset = 0
        for k, ((w, count), net) in enumerate(zip(placement, subnets, strict=True)):
            f = facts[w.address]
            h = ShardHandle(k, f"{self.run_id}-s{k}", f["lab_host"], w, count, str(net),
                            f["machine_id"] == here, f, self.conn)
            spec = self._shard_spec(h, key, digest, client_key, offset, sum(sizes))
            if h.local:  # `scalelab down/clean` of this run takes the local shards too
                self.state.record("callback", target="harness.cluster.cleanup:remove_run",
                                  kwargs={"run_id": h.run_id})
            h.future = self.conn.spawn(Shard, spec, w.address, key=f"scalelab-{h.run_id}")
            self.shards.append(h)
            offset += count
        self._each(lambda h: h.start())
        return self.shards

    def _shard_spec(self, h: ShardHandle, key: str, digest: str | None, client_key: KeyPair,
                    offset: int, total: int) -> ShardSpec:
        run_dir = (self.run_dir.resolve() / "shards" / f"s{h.index}" if h.local
                   else REMOTE_SHARD_DIRS / h.run_id)
        return ShardSpec(
            index=h.index, run_id=h.run_id, main_run_id=self.run_id, lab_host=h.lab_host,
            config=dataclasses.replace(self.config, cluster=None, subnet=h.subnet),
            run_dir=str(run_dir), image_key=key, image_digest=digest, client_key=client_key,
            offset=offset, total=total, run=self.run, lab=self.name,
            name_prefix=f"{name_label(self.name)}s{h.index}g", overlay=self.overlay,
        )

    def _measure_clocks(self) -> None:
        """Each shard's clock offset against ours: NTP's estimate, median of a few probes."""
        def probe(h: ShardHandle) -> tuple[float, float]:
            samples = []
            for _ in range(CLOCK_ROUNDS):
                t0 = time.time_ns()
                ts = int(h.now())
                samples.append((t0, ts, time.time_ns()))
            return clock_offset(samples)

        for h, (offset, trip) in zip(self.shards, self._each(probe), strict=True):
            self.clock_offsets[h.lab_host] = offset
            self.clock_round_trips[h.lab_host] = trip
        self.shards_backend.clock_offsets = self.clock_offsets  # its samples' clock

    def _plan_all(self) -> list[list[dict[str, str]]]:
        """Every shard's identities, checked together before anything boots."""
        plans = self._each(lambda h: h.plan(h.n_guests, h.subnet))
        check_identities(ident for plan in plans for ident in plan)
        tags = self.recorder.store.lab_hosts
        for h, plan in zip(self.shards, plans, strict=True):
            h.names = [str(i["name"]) for i in plan]
            for name in h.names:
                tags[name] = h.lab_host
        return plans

    def _boot_all(self) -> None:
        """Boot all shards at once, drawing one progress line for the whole lab."""
        futures = [(h, h.start_boot()) for h in self.shards]
        last_check = time.monotonic()
        while not all(f.done() for _, f in futures):
            time.sleep(PROGRESS_EVERY)
            self._report_cluster_progress()
            if time.monotonic() - last_check > connect.POLL:
                last_check = time.monotonic()
                self._check_alive(h for h, f in futures if not f.done())
        for h, fut in futures:
            self._boot_info[h] = h.booted(fut)
        self._report_cluster_progress()

    def _check_alive(self, shards: Iterable[ShardHandle]) -> None:
        """ShardLost for the first of ``shards`` whose worker is gone."""
        assert self.conn is not None
        for h in shards:
            if not self.conn.alive(h.worker.address):
                raise ShardLost(f"lab host {h.lab_host} ({h.worker.address}) went away "
                                "while its guests were coming up")

    def _report_cluster_progress(self) -> None:
        """Sum the shards' (started, ready, failed); report when it changed."""
        counts = [0, 0, 0]
        for h in self.shards:
            with contextlib.suppress(LabError):
                for i, c in enumerate(h.progress()):
                    counts[i] += c
        if tuple(counts) != self._last_progress:
            self._last_progress = (counts[0], counts[1], counts[2])
            self.progress(self._total, *counts)

    def _collect_rows(self) -> None:
        """The shards' rows, into this run's store (with lab_host, in this lab's context)."""
        store, ctx = self.recorder.store, self.recorder.context
        for h, (timings, metrics) in zip(self.shards, self._each(lambda h: h.drain()),
                                         strict=True):
            for row in timings:
                store.add_timing({**row, "run_id": ctx.run_id, "scenario": ctx.scenario,
                                  "n_guests": ctx.n_guests, "lab_host": h.lab_host})
            for row in metrics:
                store.add_metric({**row, "run_id": ctx.run_id, "scenario": ctx.scenario,
                                  "n_guests": ctx.n_guests, "lab_host": h.lab_host})

    def _assemble(self, client_key: KeyPair) -> None:
        """Client-side guests, fleet, failures, ssh_config/known_hosts and guests.json."""
        assert self.state is not None
        guests: list[Guest] = []
        for h in self.shards:
            info = self._boot_info[h]
            jump = None if h.local else h.jump()
            for d in info["guests"]:
                g = guest_from_wire(d, jump)
                guests.append(g)
                self.routes[g.name] = h
            self.failures.update(info["failures"])
        self.guests = guests
        self.backend.guests = guests
        self.recorder.store.guest_labs.update((g.name, self.name) for g in guests)
        by_name = {g.name: g for g in guests}
        fleet = ClusterFleet(dict(self.routes), by_name, self._shard_lost,
                             self.config.fanout_workers)
        now = time.time_ns()
        for name in self.failures:
            fleet.lost[name] = now
        self.fleet = fleet
        self.key_path = self.state.dir / "id_ed25519"
        write_exports(self.run_dir, [(guests, self.key_path)])
        write_inventory(self.run_dir, [InventoryLab(self.name, guests, self.key_path)])
        self._write_inventory(guests)

    # -- helpers -------------------------------------------------------------------------

    def _each(self, func: Callable[[ShardHandle], T]) -> list[T]:
        """``func(shard)`` for every shard at once; results in shard order."""
        if not self.shards:
            return []
        with ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="shards") as p:
            return list(p.map(func, self.shards))

    def _shard_lost(self, shard: ShardHandle, exc: ShardLost) -> None:
        """A lab host is gone: its guests are lost for the rest of the run, one row each."""
        with self._lost_lock:
            if shard.lost:
                return
            shard.lost = True
        now = time.time_ns()
        fleet = self.fleet
        for name in shard.names:
            if fleet is not None:
                fleet.lost.setdefault(name, now)
            self.recorder.timing("lost", now, now, guest=name, phase="lost", ok=False,
                                 error_class="lost", error=str(exc)[:500])

    # -- use -----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["clock_offsets"] = dict(self.clock_offsets)
        info["cluster"] = {
            "spec": self.cluster.text,
            "scheduler": self.conn.address if self.conn is not None else None,
            "network": self.network,
            "overlay": self.overlay.describe() if self.overlay is not None else None,
            "connect_seconds": self.connect_seconds,
            "shards": [
                {"lab_host": h.lab_host, "worker": h.worker.address, "run_id": h.run_id,
                 "guests": h.n_guests, "subnet": h.subnet, "lost": h.lost,
                 "bringup_seconds": self._boot_info.get(h, {}).get("seconds"),
                 "clock_round_trip_s": self.clock_round_trips.get(h.lab_host)}
                for h in self.shards
            ],
        }
        return info

    def keep(self) -> None:
        """Leave every shard's guests up after this process ends (``scalelab down``)."""
        for h in self.shards:
            if not h.lost:
                with contextlib.suppress(LabError):
                    h.keep()
        super().keep()
        self._release()

    # -- teardown ------------------------------------------------------------------------

    def take_down_guests(self) -> list[str]:
        """Every shard down (and what lost ones left), then the Dask connection released;
        the local shards' journals go with this lab's (callbacks)."""
        problems = [p for got in self._each(self._stop_shard) for p in got]
        self._release()
        return problems

    def _stop_shard(self, h: ShardHandle) -> list[str]:
        if h.actor is None:
            return []  # never made: nothing was created on its host
        try:
            if h.actor is not None and not h.lost:
                return [f"{h.lab_host}: {p}" for p in h.stop()]
        except ShardLost as exc:
            self._shard_lost(h, exc)
        except Exception as exc:
            return [f"{h.lab_host}: stopping its shard: {exc}"]
        return self._reap(h)

    def _reap(self, h: ShardHandle) -> list[str]:
        """Remove what a lost shard left, through a live worker on its host."""
        from harness.cluster.cleanup import remove_dead_run

        if self.conn is None or h.local:
            return []  # a local shard is removed by this lab's journal (callback)
        advice = f"run `scalelab clean {h.run_id}` on {h.worker.host}"
        try:
            peers = [a for a in self.conn.workers() if LabWorker(a).host == h.worker.host]
            if not peers:
                return [f"{h.lab_host} is gone; {advice}"]
            got = self.conn.run(remove_dead_run, h.run_id, workers=peers[:1], timeout=120)
        except Exception as exc:
            return [f"{h.lab_host}: cleaning {h.run_id}: {exc}; {advice}"]
        result = got.get(peers[0])
        return [f"{h.lab_host}: {p}" for p in result] if isinstance(result, list) else []

    def _release(self) -> None:
        if self.conn is not None:
            for h in self.shards:
                with contextlib.suppress(Exception):
                    if h.future is not None:
                        h.future.release()
            conn, self.conn = self.conn, None
            connect.release(conn)
