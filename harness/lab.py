"""A lab: N guests of one image on one backend, reachable over pinned SSH.

``Lab`` ties the parts together: it picks the image, derives identities, journals every
resource, asks the backend to start the guests, waits for each to answer SSH (recording
every phase as a timing row), exports ``ssh_config``/``known_hosts`` and hands out a
``Fleet`` for fan-out (a ``FanOut``).  ``stop()`` takes everything down and never raises.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko

from harness.backends import load_backend
from harness.backends.base import Backend, Guest, HasFootprint, HasJumpHosts, Jump, RunContext
from harness.config import LabConfig
from harness.errors import CapacityWarning, LabError
from harness.identity import GuestSpec, KeyPair, choose_subnet, make_specs, preflight
from harness.image import cache
from harness.image.ensure import ensure_image
from harness.inventory import InventoryLab, write_inventory
from harness.readywait import ReadyWaiter, WaitHooks
from harness.roles import Roles, RoleSpec
from harness.sessionbudget import available_bytes, sessions_off_reason
from harness.ssh import (
    FanOut,
    Fleet,
    GuestError,
    load_private_key,
    write_client_key,
    write_exports,
)
from harness.state import RunState
from harness.store import Recorder

#: (total, started, ready, failed) → None; drawn as one line by the plugin and the CLI.
ProgressFn = Callable[[int, int, int, int], None]

#: The lab of the run's default image. Its guests are g000…; any other lab's are
#: <lab>-g000…, so that no two guests of one run share a name.
DEFAULT_LAB = "default"


def name_label(lab: str) -> str:
    """What a lab's guest names start with: nothing for the default lab, ``<lab>-`` else."""
    return "" if lab == DEFAULT_LAB else f"{lab}-"


@dataclass(frozen=True)
class LabPlan:
    """What :meth:`Lab.plan` decided and journalled: who the guests are and how they are
    reached; :meth:`Lab.boot` starts them from it."""

    specs: list[GuestSpec]
    subnet: IPv4Network
    client_key: KeyPair
    key_path: Path
    state: RunState


@dataclass
class BringUpStats:
    started: int = 0
    ready: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Lab:
    """One lab of guests. Use as a context manager, or call ``start``/``stop``."""

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
        name_prefix: str | None = None,
    ) -> None:
        """``run_id``/``run_dir`` are the lab's own; ``run``/``report_dir`` the run it belongs
        to (by default the same: a run of one lab)."""
        self.config = config
        self.run_id = run_id
        self.run_dir = run_dir
        self.name = name
        self.run = run or run_id
        self.report_dir = report_dir or run_dir
        self.recorder = recorder
        self.progress = progress or (lambda total, s, r, f: None)
        self.image = image
        self.name_prefix = name_label(name) + "g" if name_prefix is None else name_prefix
        self.backend: Backend = load_backend(config.backend_url)
        self.state: RunState | None = None
        self.guests: list[Guest] = []
        self.fleet: FanOut | None = None
        self.failures: dict[str, GuestError] = {}
        self.subnet: str | None = None
        #: The client key that logs in to this lab's guests (in its state directory).
        self.key_path: Path | None = None
        #: The lab host the guests run on, when the lab is a cluster's shard.
        self.lab_host = ""
        self.bringup_seconds: float | None = None
        #: Why the guests run without executor sessions (decided at bring-up), or None.
        self.sessions_off: str | None = None
        #: Every role dealt out over this lab's guests during the run (the inventory's
        #: ``role_<name>`` groups): the lab's own ``--roles`` and its scenarios' markers.
        self.roles = Roles()
        self._stats = BringUpStats()
        self._total = 0
        self._stopped = False
        self._kept = False

    # -- bring-up ------------------------------------------------------------------------

    def _phase(self, guest: str, op: str, start_ns: int, end_ns: int) -> None:
        self.recorder.timing(op, start_ns, end_ns, guest=guest, phase="bringup")
        if op == "started":
            with self._stats.lock:
                self._stats.started += 1
            self._report_progress()

    @property
    def counts(self) -> tuple[int, int, int]:
        """(started, ready, failed) guests of the bring-up so far."""
        s = self._stats
        return s.started, s.ready, s.failed

    def _report_progress(self) -> None:
        s = self._stats
        self.progress(self._total, s.started, s.ready, s.failed)

    def start(self, n_guests: int, *, min_ready: float = 1.0) -> list[Guest]:
        """Bring up ``n_guests``; raise LabError if fewer than ``min_ready`` of them answer."""
        t0 = time.monotonic()
        self._total = n_guests
        try:
            return self._start(n_guests, min_ready, t0)
        except BaseException:
            self.stop()
            raise

    def _start(self, n: int, min_ready: float, t0: float) -> list[Guest]:
        """The bring-up, step by step (a cluster lab runs its own flow; its shards run these
        steps one at a time, as the client asks)."""
        clients = self.boot(self.plan(n))
        self.assemble(clients, t0)
        self.require_ready(n, min_ready)
        return self.guests

    # -- the steps of a bring-up ---------------------------------------------------------

    def plan(self, n: int, *, subnet: str | None = None,
             client_key: KeyPair | None = None) -> LabPlan:
        """Journal, client key and the guests' identities (checked unique); nothing starts."""
        cfg = self.config
        image = self.image = self.image or ensure_image(cfg, vm=self.backend.needs_vm_image)
        self.backend.check(image, n)
        net = choose_subnet(cfg.subnet if subnet is None else subnet, n)
        self.subnet = str(net)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState.create(self.run_id, kept=False, **self.journal_header())
        key = client_key or KeyPair.generate(f"scalelab-{self.run_id}")
        # The private key lives with the run's state (mode 0600), never in the report.
        self.key_path = write_client_key(self.state.dir, key)
        specs = [self.identity(s) for s in make_specs(
            self.run_id, n, net, oui=self.backend.mac_oui, prefix=self.name_prefix,
            memory=cfg.guest_memory, cpus=cfg.guest_cpus,
        )]
        preflight(specs)
        self.recorder.store.guest_labs.update((s.name, self.name) for s in specs)
        return LabPlan(specs, net, key, self.key_path, self.state)

    def identity(self, spec: GuestSpec) -> GuestSpec:
        """A guest's identity as the lab gives it (a shard: the cluster's, see ShardLab)."""
        return spec

    def boot(self, plan: LabPlan) -> dict[str, paramiko.SSHClient]:
        """Start the planned guests and wait until each answers SSH; the clients of those
        that did (the others are in ``failures``)."""
        net = plan.subnet
        ctx = RunContext(
            run_id=self.run_id, state=plan.state, run_dir=self.run_dir,
            client_public_key=plan.client_key.public_openssh, on_phase=self._phase,
            options={"subnet": str(net),
                     "subnet_gateway": f"{plan.specs[0].gateway}/{net.prefixlen}"},
        )
        return self._bring_up(plan.specs, ctx, plan.key_path, plan.client_key.private_openssh)

    def assemble(self, clients: dict[str, paramiko.SSHClient], t0: float) -> None:
        """The fleet over the guests that answered (the others lost from the start), and
        what each guest costs the host."""
        by_name = {g.name: g for g in self.guests}
        order = [g.name for g in self.guests if g.name in clients]
        self.fleet = Fleet({n_: clients[n_] for n_ in order}, by_name, self.config.fanout_workers)
        for name in self.failures:
            self.fleet.lost[name] = time.time_ns()
        self.bringup_seconds = time.monotonic() - t0
        self._record_footprint()

    def require_ready(self, n: int, min_ready: float) -> None:
        """LabError unless at least ``min_ready`` of ``n`` guests (and one at least) answered."""
        ready = len(self.require_fleet().names)
        if ready < min_ready * n or ready == 0:
            shown = "; ".join(str(e) for e in list(self.failures.values())[:3])
            raise LabError(f"{n - ready} of {n} guests did not come up: {shown}")

    def journal_header(self) -> dict[str, Any]:
        """What the lab's state journal says of it: which run and lab, and where they write."""
        return {
            "backend": self.backend.name, "run": self.run, "lab": self.name,
            "lab_dir": str(self.run_dir.resolve()), "run_dir": str(self.report_dir.resolve()),
        }

    def _write_inventory(self, guests: list[Guest]) -> None:
        """``guests.json``: who is in the lab, for people and for ``scalelab fault``."""
        inventory = {
            "run_id": self.run_id,
            "run": self.run,
            "lab": self.name,
            "name_prefix": self.name_prefix,
            "backend": self.backend.name,
            "backend_options": self.backend.options,
            "subnet": self.subnet,
            "guests": [
                {"name": g.name, "index": g.spec.index, "ip": g.spec.address, "mac": g.spec.mac,
                 "host": g.host, "port": g.port, "lab_host": g.lab_host}
                for g in guests
            ],
        }
        (self.run_dir / "guests.json").write_text(json.dumps(inventory, indent=1) + "\n")

    def _bring_up(self, specs: list[GuestSpec], ctx: RunContext, key_path: Path,
                  private_key: str) -> dict[str, paramiko.SSHClient]:
        """Start the guests and wait for each to answer SSH; the clients of those that did.

        Each guest is waited for from the moment the backend says it is started, so the
        handshakes of the first guests overlap the starting of the last.
        """
        assert self.image is not None
        self.sessions_off = sessions_off_reason(
            self.config.sessions, len(specs), self.backend.guests_in_host_memory,
            available_bytes())
        if self.sessions_off is not None and self.config.sessions == "auto":
            warnings.warn(self.sessions_off, CapacityWarning, stacklevel=2)
        waiter = ReadyWaiter(load_private_key(private_key), self.config, WaitHooks(
            on_phase=self._phase, on_ready=self._ready, on_failed=self._ready_failed,
            dead=self.backend.dead, jump_clients=self._jump_clients,
        ), self.sessions_off)
        ctx.on_started = waiter.submit
        try:
            self.backend.prepare(self.image, ctx)
            guests = self.backend.up(specs)
            for g in guests:
                g.lab_host = self.lab_host or g.lab_host
            self.guests = guests
            self.key_path = key_path
            write_exports(self.run_dir, [(guests, key_path)])
            write_inventory(self.run_dir, [InventoryLab(self.name, guests, key_path)])
            self._write_inventory(guests)
            for g in guests:
                waiter.submit(g)  # those the backend did not announce
            return waiter.collect()
        except BaseException:
            waiter.abandon()
            raise

    def _jump_clients(self) -> dict[Jump, paramiko.SSHClient]:
        # Read when each wait starts: a backend sets its jump clients in prepare().
        return self.backend.jump_clients if isinstance(self.backend, HasJumpHosts) else {}

    def _ready(self, name: str) -> None:
        with self._stats.lock:
            self._stats.ready += 1
        self._report_progress()

    def _ready_failed(self, name: str, err: GuestError) -> None:
        self.failures[name] = err
        now = time.time_ns()
        self.recorder.timing("ready", now, now, guest=name, phase="bringup", ok=False,
                             error_class=err.error_class, error=err.message)
        with self._stats.lock:
            self._stats.failed += 1
        self._report_progress()

    def _record_footprint(self) -> None:
        """Per-guest memory and copy-on-write bytes, as metric rows."""
        if not isinstance(self.backend, HasFootprint):
            return
        for name, values in self.backend.footprint(self.guests).items():
            for metric, (value, unit) in values.items():
                self.recorder.metric(metric, value, unit=unit, guest=name)

    # -- use -----------------------------------------------------------------------------

    def require_fleet(self) -> FanOut:
        if self.fleet is None:
            raise LabError("the lab is not up")
        return self.fleet

    def deal_roles(self, spec: RoleSpec, names: Sequence[str] | None = None) -> Roles:
        """Deal ``spec`` out over ``names`` (the lab's guests that are up, by default) and
        note it for the inventory; RolesDontFit when there are too few guests."""
        roles = spec.assign(self.require_fleet().names if names is None else names)
        self.roles = self.roles.merged(roles)
        return roles

    def keep(self) -> None:
        """Leave the lab up after this process ends (``scalelab down`` takes it down)."""
        if self.state is not None:
            self.state.update_header(kept=True)
        self._stopped = True
        self._kept = True
        if self.fleet is not None:
            self.fleet.close()

    def live_guests(self) -> list[Guest]:
        """The guests started and not lost (all started ones while the lab comes up)."""
        lost = self.fleet.lost if self.fleet is not None else {}
        return [g for g in self.guests if g.name not in lost]

    @property
    def up(self) -> bool:
        """Its guests are running: brought up and not taken down (a kept lab stays up)."""
        return bool(self.guests) and (self._kept or not self._stopped)

    def describe(self) -> dict[str, Any]:
        return {
            "lab": self.name,
            "backend": self.backend.describe(),
            "image": self.image.info() if self.image else None,
            "subnet": self.subnet,
            "guests_up": len(self.fleet.names) if self.fleet else 0,
            "bringup_seconds": self.bringup_seconds,
            "failures": {n: e.error_class for n, e in self.failures.items()},
            "roles": {r: list(ns) for r, ns in self.roles.members_of.items()},
            "sessions": {"mode": self.config.sessions, "on": self.sessions_off is None,
                         "why_off": self.sessions_off},
        }

    # -- teardown ------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Take the lab down; idempotent, never raises. Returns problems met."""
        if self._stopped:
            return []
        self._stopped = True
        problems: list[str] = []
        if self.fleet is not None:
            with contextlib.suppress(Exception):
                self.fleet.close()
        try:
            problems += self.take_down_guests()
        except Exception as exc:
            problems.append(f"backend down: {exc}")
        if self.state is not None:
            problems += self.state.remove_all()
        return problems

    def take_down_guests(self) -> list[str]:
        """The guests and what the backend made for them (a cluster: every shard's)."""
        return self.backend.down()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
