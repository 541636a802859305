"""A cluster lab's shard on one lab host: its spec (what the client sends once), its store
(rows kept for the client to drain) and its lab, which runs the harness lab's own bring-up
steps one at a time, as the client asks: plan (identities, checked across shards by the
client), then boot (start, wait for SSH)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.base import Guest
from harness.cluster.overlay import Overlay
from harness.cluster.tunnel import Tunnel
from harness.config import LabConfig
from harness.errors import LabError
from harness.identity import GuestSpec, KeyPair, mac_for, machine_id_for
from harness.image import cache
from harness.lab import Lab, LabPlan
from harness.store import Context, Store


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
    #: How the lab hosts are joined into one lab network (None: this shard is alone).
    overlay: Overlay | None = None


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
        self.lab_host = spec.lab_host
        self._plan: LabPlan | None = None
        self._t0 = time.monotonic()
        self.tunnel: Tunnel | None = None

    def journal_header(self) -> dict[str, Any]:
        return {**super().journal_header(), "cluster_run": self.spec.main_run_id,
                "lab_host": self.spec.lab_host}

    def identity(self, spec: GuestSpec) -> GuestSpec:
        """MAC and machine-id from the cluster run and the guest's global index."""
        i = self.spec.offset + spec.index
        spec = dataclasses.replace(
            spec, mac=mac_for(self.spec.main_run_id, i, self.backend.mac_oui),
            machine_id=machine_id_for(self.spec.main_run_id, i),
        )
        o = self.spec.overlay
        if o is None:
            return spec
        # One subnet for the run: this shard's guests in its own block, on link with all.
        return dataclasses.replace(spec, ip=o.guest_ip(self.spec.index, spec.index),
                                   gateway=o.gateway(self.spec.index))

    def plan_shard(self, n: int, subnet: str) -> list[GuestSpec]:
        """The lab's plan on the client's subnet with the cluster's client key."""
        self._t0 = time.monotonic()
        self._total = n
        # The subnet is the client's choice, checked here against this host's own routes.
        self._plan = self.plan(n, subnet=subnet, client_key=self.spec.client_key)
        if self.spec.overlay is not None:
            self.tunnel = Tunnel(self.spec.overlay, self.spec.index, self.run_id,
                                 self._plan.state)
        return self._plan.specs

    def require_tunnel(self) -> Tunnel:
        if self.tunnel is None:
            raise LabError(f"shard {self.run_id} is not joined to a lab network")
        return self.tunnel

    def boot_shard(self) -> list[Guest]:
        """Start the planned guests and wait until each answers SSH (or fails)."""
        if self._plan is None:
            raise LabError("the shard was asked to boot before it planned its guests")
        self.assemble(self.boot(self._plan), self._t0)
        return self.guests
