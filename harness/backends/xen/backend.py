"""``XenBackend``: PV domUs created with ``xl``, sharing one read-only image."""

from __future__ import annotations

import contextlib
import posixpath
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko

from harness.backends.base import Backend, Footprint, Guest, GuestShell, Jump, RunContext, now_ns
from harness.backends.guestnetem import shape_in_guest
from harness.backends.xen.bundle import bundle_sources
from harness.backends.xen.cleanup import (
    ALREADY_REMOVED,
    destroy_on,
    domain_loops,
    removed_key,
)
from harness.backends.xen.dhcp import serve_leases
from harness.backends.xen.dom0 import CREATE_TIMEOUT, Dom0, RemoteDom0, dom0_for
from harness.backends.xen.domu import CreateFailed, Domain, domain_config, xl_create
from harness.backends.xen.facts import Dom0Facts, probe_dom0
from harness.backends.xen.footprint import domu_footprint
from harness.backends.xen.labrun import XenRun
from harness.backends.xen.options import Target, XenOptions
from harness.backends.xen.staging import add_bridge_address, ensure_bundle
from harness.backends.xen.telemetry import sample_domus
from harness.backends.xen.xl import DomainWatch, domain_ids, xl_list
from harness.backends.xen.xlconfig import DomainConfig, domain_name, render_config
from harness.degrade import Shaping
from harness.errors import LabError, UserError
from harness.guestfiles import make_guest_disk
from harness.identity import XEN_OUI, GuestSpec
from harness.image.cache import Image
from harness.state import Resource, teardown
from harness.telemetry.sample import Sample


class XenBackend(Backend):
    name = "xen"
    faults = frozenset({"kill", "pause", "isolate", "degrade"})
    needs_vm_image = True
    guests_in_host_memory = False  # their executors live in the VMs' own memory
    mac_oui = XEN_OUI

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.opts = XenOptions.parse(self.options)
        self.jump_clients: dict[Jump, paramiko.SSHClient] = {}
        #: The connection to dom0, made by ``check`` (it probes dom0) or ``prepare``.
        self.dom0: Dom0 | None = None
        self.facts: Dom0Facts | None = None
        self._run: XenRun | None = None
        self.domains: dict[str, Domain] = {}
        self._resources: list[Resource] = []
        self._address: str | None = None
        self._isolated: set[str] = set()
        self._lock = threading.Lock()
        #: Which domUs still exist, for ``dead()`` (made on first use; a test may give one).
        self.watch: DomainWatch | None = None

    @property
    def target(self) -> Target:
        return self.opts.target

    @property
    def run(self) -> XenRun:
        """This run's context, dom0 and files there (what ``prepare`` returned)."""
        if self._run is None:
            raise LabError("the xen backend is not prepared: call prepare() first")
        return self._run

    # -- checks ------------------------------------------------------------------------------

    def check(self, image: Image, n_guests: int) -> None:
        if not image.vm or not image.kernel.is_file() or not image.initrd.is_file():
            raise UserError(
                f"image {image.key} was built without VM parts (kernel, initramfs), which "
                "xen domUs boot: build it with `scalelab image build --vm` or give a VM image"
            )
        image.check()
        self.facts = self.probe(n_guests)

    def _connect(self) -> Dom0:
        if self.dom0 is None:
            if self.target.local and shutil.which("xl") is None:
                raise UserError("xen://local: there is no `xl` on this host: it is not a Xen "
                                "dom0 (apt-get install xen-utils, boot Xen), or use xen://HOST")
            self.dom0 = dom0_for(self.target)
        return self.dom0

    def probe(self, n_guests: int) -> Dom0Facts:
        """Check on dom0 what the seed set up by hand; say clearly what is missing."""
        return probe_dom0(self._connect(), self.opts, n_guests)

    # -- prepare -----------------------------------------------------------------------------

    def _record(self, target: str, **kwargs: Any) -> None:
        self._record_in(self.run.ctx, target, **kwargs)

    def _record_in(self, ctx: RunContext, target: str, **kwargs: Any) -> None:
        res = ctx.state.record(
            "callback", target=f"harness.backends.xen:{target}",
            kwargs={"target": self.target.as_kwargs(), **kwargs},
        )
        with self._lock:
            self._resources.append(res)

    def prepare(self, image: Image, ctx: RunContext) -> XenRun:
        if self.facts is None:
            self.check(image, 1)
        d = self._connect()

        def record(target: str, **kwargs: Any) -> None:
            self._record_in(ctx, target, **kwargs)

        run_dir = posixpath.join(self.opts.workdir, "runs", ctx.run_id)
        record("remove_path", path=run_dir)
        d.check(["mkdir", "-p", run_dir], "making the run directory")
        if self.target.local:
            files = {k: str(v) for k, v in bundle_sources(image).items()}
        else:
            files = ensure_bundle(d, self.opts.workdir, image, ctx.run_id, record)
        # Real paths: xenstore, losetup and the journal then all name a file the same way.
        real = d.check(["readlink", "-f", *files.values()], "resolving the image paths")
        have = self.facts.bridge_addresses if self.facts else []
        self._address = add_bridge_address(
            d, self.opts.bridge, have, ctx.options["subnet"], ctx.options["subnet_gateway"],
            record,
        ) or self._address
        jump = None
        if isinstance(d, RemoteDom0):
            jump = Jump(self.target.host, self.target.port, self.target.user,
                        d.server_key_line(), identity_file=self.target.key)
            self.jump_clients = {jump: d.jump_client}
        (ctx.run_dir / "xen").mkdir(exist_ok=True)
        self._run = XenRun(ctx, d, run_dir, dict(zip(files, real.splitlines(), strict=True)),
                           jump)
        return self._run

    def _ensure_bundle(self, d: Dom0, image: Image, ctx: RunContext) -> dict[str, str]:
        """The image, kernel and initramfs on dom0, copied once per build (by digest)."""
        return ensure_bundle(d, self.opts.workdir, image, ctx.run_id,
                             lambda target, **kw: self._record_in(ctx, target, **kw))

    # -- up ----------------------------------------------------------------------------------

    def _put_disk(self, spec: GuestSpec, ctx: RunContext, d: Dom0) -> str:
        """The domU's writable disk, made here with its identity inside, on dom0."""
        disk = posixpath.join(self.run.run_dir, f"{spec.name}.img")
        self._record("remove_path", path=disk)
        size = self.opts.disk_mib << 20
        if self.target.local:
            make_guest_disk(spec, ctx.client_public_key, Path(disk), size)
        else:
            with tempfile.TemporaryDirectory(prefix="scalelab-xen-") as tmp:
                local = Path(tmp) / "disk.img"
                make_guest_disk(spec, ctx.client_public_key, local, size)
                d.put(local, disk)
        return disk

    def _put_config(self, spec: GuestSpec, cfg: DomainConfig, ctx: RunContext, d: Dom0) -> str:
        """The domU's xl config on dom0, and a copy in the run directory for the reader."""
        cfg_path = posixpath.join(self.run.run_dir, f"{spec.name}.cfg")
        text = render_config(cfg)
        (ctx.run_dir / "xen" / f"{spec.name}.cfg").write_text(text)
        self._record("remove_path", path=cfg_path)
        d.write_text(cfg_path, text)
        return cfg_path

    def _guest(self, spec: GuestSpec, dom: Domain) -> Guest:
        return Guest(spec, spec.address, 22, jump=self.run.jump,
                     lab_host=self.target.host or "local",
                     info={"domain": dom.name, "domid": dom.domid, "disk": dom.disk,
                           "create_retries": dom.retries})

    def _create_one(self, spec: GuestSpec) -> Domain:
        """Writable disk, config, ``xl create``: one domU, its phases recorded, announced to
        the lab as soon as it runs (so its readiness wait overlaps the others' creation)."""
        ctx, d, files = self.run.ctx, self.run.dom0, self.run.files
        t0 = now_ns()
        disk = self._put_disk(spec, ctx, d)
        cfg = domain_config(spec, self.opts, files, ctx.run_id, disk)
        dom = Domain(spec.name, cfg.name, self._put_config(spec, cfg, ctx, d), disk)
        t1 = now_ns()
        ctx.on_phase(spec.name, "created", t0, t1)
        self._record("destroy_domain", name=cfg.name)
        with self._lock:
            self.domains[spec.name] = dom
        dom.retries = xl_create(d, spec.name, cfg.name, dom.cfg, [files["base.img"], disk])
        dom.created_at = time.monotonic()
        ctx.on_phase(spec.name, "started", t1, now_ns())
        dom.started = self._guest(spec, dom)
        ctx.on_started(dom.started)
        # libxl's block script sometimes leaves a loop device behind on destroy (it reads
        # the device back from xenstore, racing the removal): note this domU's own.
        dom.loops = domain_loops(d, cfg.name)
        if dom.loops:
            self._record("release_loops", loops=dom.loops)
        return dom

    def _create_all(self, specs: Sequence[GuestSpec]) -> tuple[list[Domain], list[CreateFailed]]:
        """Create the domUs, ``parallel`` at a time; those created and the failures."""
        run_id = self.run.ctx.run_id
        failures: list[CreateFailed] = []
        created: list[Domain] = []
        workers = max(1, min(self.opts.parallel, len(specs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xl-create") as pool:
            futures = [(s, pool.submit(self._create_one, s)) for s in specs]
            for spec, fut in futures:
                try:
                    created.append(fut.result())
                except CreateFailed as exc:
                    failures.append(exc)
                except Exception as exc:
                    failures.append(CreateFailed(spec.name, domain_name(run_id, spec.name),
                                                 str(exc)))
        return created, failures

    def _abandon_up(self, created: list[Domain], failures: list[CreateFailed]) -> LabError:
        """Half-way: take down the domUs already created (and whatever xl may have left of
        the failed ones); the error that says what failed."""
        d = self.run.dom0
        for dom in created:
            self._destroy(dom)
        for f in failures:
            with contextlib.suppress(LabError):
                destroy_on(d, f.domain)
        first = failures[0]
        more = f" ({len(failures) - 1} more failed)" if len(failures) > 1 else ""
        return LabError(
            f"xl create of domU {first.domain} (guest {first.guest}) failed on dom0 "
            f"{d.label}: {first.message}{more}; the {len(created)} domU(s) "
            "already created were destroyed"
        )

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        serve_leases(self.run, self.opts, specs, self._record)  # before any domU asks
        created, failures = self._create_all(specs)
        if failures:
            raise self._abandon_up(created, failures)
        ids = self.domain_ids()
        guests = []
        for spec in specs:
            dom = self.domains[spec.name]
            dom.domid = ids.get(dom.name)
            if dom.domid is None:
                raise LabError(f"domU {dom.name} is not in `xl list` right after `xl create` "
                               f"(crashed at once?): see its console on dom0 {self.run.dom0.label}")
            guest = dom.started or self._guest(spec, dom)
            guest.info["domid"] = dom.domid
            guests.append(guest)
        self.guests += guests
        return guests

    def dead(self, guest: Guest) -> str | None:
        """A domU that crashed, powered off or rebooted is destroyed by Xen (its config says
        ``on_crash = "destroy"``...): one that has left ``xl list`` will never answer."""
        dom = self.domains.get(guest.name)
        if dom is None or self._run is None:
            return None
        d = self._run.dom0
        with self._lock:  # one watch, however many readiness threads ask at once
            if self.watch is None:
                self.watch = DomainWatch(d)
            watch = self.watch
        if not watch.gone(dom.name, dom.created_at):
            return None
        return (f"domU {dom.name} is gone from `xl list` on dom0 {d.label} (it "
                "crashed, powered off or rebooted, and Xen destroyed it)")

    def domain_ids(self) -> dict[str, int]:
        """Domain name → domid of every domain dom0 runs (from ``xl list -l``, JSON)."""
        return domain_ids(self.run.dom0)

    def states(self) -> dict[str, str]:
        """Domain name → xl's state letters (``r-----``, ``--p---``...)."""
        return {name: row[4] for name, row in xl_list(self.run.dom0).items()}

    # -- down --------------------------------------------------------------------------------

    def _destroy(self, dom: Domain) -> str | None:
        """Destroy one domU of this run; a problem met is returned, not raised."""
        try:
            destroy_on(self.run.dom0, dom.name)
        except LabError as exc:
            return str(exc)
        ALREADY_REMOVED.add((self.target.pool_key, "domain", dom.name))
        if dom.loops:
            ALREADY_REMOVED.add((self.target.pool_key, "loops", tuple(map(tuple, dom.loops))))
        return None

    def down(self) -> list[str]:
        if self._run is None:
            return []
        problems: list[str] = []
        try:
            present = set(self.domain_ids())
        except LabError as exc:
            problems.append(str(exc))
            present = {d.name for d in self.domains.values()}
        doomed = [d for d in self.domains.values() if d.name in present]
        for d in self.domains.values():
            if d.name not in present:
                ALREADY_REMOVED.add((self.target.pool_key, "domain", d.name))
        if doomed:
            workers = max(1, min(self.opts.parallel, len(doomed)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xl-destroy") as p:
                problems += [m for m in p.map(self._destroy, doomed) if m]
        if not problems:
            # Every domU is gone: DHCP, loops, files and the address can go (newest first).
            for res in reversed(list(self._resources_of(
                    "stop_dhcp", "release_loops", "remove_path", "remove_address"))):
                met = teardown([res])
                problems += met
                if not met:
                    ALREADY_REMOVED.add(removed_key(self.target, res))
        self.domains.clear()
        self.guests = []
        return problems

    def _resources_of(self, *funcs: str) -> Iterator[Resource]:
        wanted = {f"harness.backends.xen:{f}" for f in funcs}
        return (r for r in self._resources if r.get("target") in wanted)

    # -- reporting ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["dom0"] = self.target.label
        out["bridge"] = self.opts.bridge
        out["memory_mib"] = self.opts.memory_mib
        out["vcpus"] = self.opts.vcpus
        out["bridge_address_added"] = self._address
        out["addressing"] = self.opts.addressing
        if self.facts is not None:
            out["xen_version"] = self.facts.xen_version
            out["dom0_cpus"] = self.facts.nr_cpus
        return out

    def guest_memory(self, guest: Guest) -> int | None:
        row = xl_list(self.run.dom0).get(str(guest.info.get("domain")))
        return int(row[2]) << 20 if row else None

    def upper_bytes(self, guest: Guest) -> int | None:
        value = self.footprint([guest]).get(guest.name, {}).get("upper_bytes")
        return int(value[0]) if value else None

    def sample(self, guests: Sequence[Guest], *, slow: bool = False) -> list[Sample]:
        """Per domU, from dom0: CPU seconds, memory Xen gives it, its vif's counters and
        (slow rounds) its block devices' bytes (see backends/xen/telemetry)."""
        return sample_domus(self._run.dom0, guests, slow=slow) if self._run is not None else []

    def footprint(self, guests: Sequence[Guest]) -> Footprint:
        """Per guest: memory Xen gives the domU and the blocks its writable disk holds."""
        return domu_footprint(self._run.dom0, guests) if self._run is not None else {}

    # -- faults ------------------------------------------------------------------------------

    def _xl(self, verb: str, guest: Guest) -> None:
        self.run.dom0.check(["xl", verb, str(guest.info["domain"])], f"xl {verb} {guest.name}",
                        timeout=CREATE_TIMEOUT)

    def kill(self, guest: Guest) -> None:
        destroy_on(self.run.dom0, str(guest.info["domain"]))

    def pause(self, guest: Guest) -> None:
        self._xl("pause", guest)

    def resume(self, guest: Guest) -> None:
        self._xl("unpause", guest)

    def _vif(self, guest: Guest) -> str:
        return f"vif{guest.info['domid']}.0"

    def isolate(self, guests: Sequence[Guest]) -> None:
        """Cut ``guests`` off the bridge by taking their vif down in dom0."""
        for g in guests:
            self.run.dom0.check(["ip", "link", "set", self._vif(g), "down"], f"isolating {g.name}")
            self._isolated.add(g.name)

    def heal(self) -> None:
        by_name = {g.name: g for g in self.guests}
        for name in sorted(self._isolated):
            self.run.dom0.check(["ip", "link", "set", self._vif(by_name[name]), "up"],
                            f"healing {name}")
        self._isolated.clear()

    def shape(self, guest: Guest, rules: Sequence[Shaping], shell: GuestShell) -> None:
        """netem inside the domU; dom0 (the jump) is the control peer, never delayed."""
        shape_in_guest(guest, rules, shell)
