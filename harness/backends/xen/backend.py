"""``XenBackend``: PV domUs created with ``xl``, sharing one read-only image."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from harness.backends.base import Backend, Guest, Jump, RunContext, now_ns
from harness.backends.xen.bundle import BUNDLE_FILES, bundle_id, bundle_sources
from harness.backends.xen.cleanup import (
    _DONE,
    _done_key,
    _release,
    destroy_on,
    domain_loops,
    loops_on,
)
from harness.backends.xen.dom0 import (
    CREATE_TIMEOUT,
    SHORT_TIMEOUT,
    TRANSIENT,
    Dom0,
    RemoteDom0,
    dom0_for,
)
from harness.backends.xen.options import Target, XenOptions
from harness.backends.xen.xlconfig import (
    DomainConfig,
    disk_spec,
    domain_name,
    guest_cmdline,
    render_config,
    vif_spec,
)
from harness.errors import LabError, UserError
from harness.guestfiles import make_guest_disk
from harness.identity import XEN_OUI, GuestSpec
from harness.image.cache import Image
from harness.plumbing.units import parse_size
from harness.state import Resource, teardown


@dataclass
class _Domain:
    guest: str
    name: str
    cfg: str
    disk: str
    domid: int | None = None
    loops: list[list[str]] = field(default_factory=list)
    retries: int = 0


@dataclass
class Dom0Facts:
    """What ``check`` learnt about dom0."""

    xen_version: str = ""
    free_memory_mib: int = 0
    nr_cpus: int = 0
    bridge_addresses: list[str] = field(default_factory=list)


class XenBackend(Backend):
    name = "xen"
    faults = frozenset({"kill", "pause", "isolate"})
    needs_vm_image = True
    mac_oui = XEN_OUI

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.opts = XenOptions.parse(self.options)
        self.jump_clients: dict[Jump, paramiko.SSHClient] = {}
        self.jump: Jump | None = None
        self.dom0: Dom0 | None = None
        self.facts: Dom0Facts | None = None
        self.ctx: RunContext | None = None
        self.image: Image | None = None
        self.run_dir = ""
        self.files: dict[str, str] = {}
        self.domains: dict[str, _Domain] = {}
        self._resources: list[Resource] = []
        self._address: str | None = None
        self._isolated: set[str] = set()
        self._lock = threading.Lock()

    @property
    def target(self) -> Target:
        return self.opts.target

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
        d = self._connect()
        where = f"dom0 {d.label}"
        info = d.run(["xl", "info"], timeout=SHORT_TIMEOUT)
        if info.rc == 127 or ("not found" in info.err and info.rc != 0):
            raise UserError(f"{where} has no `xl`: install xen-utils there (and boot it "
                            "under Xen), or point --backend at a Xen dom0")
        if info.rc != 0:
            raise UserError(f"`xl info` on {where} does not answer: {info.message()} "
                            "(is Xen running, and xenstored started?)")
        fields = _xl_info(info.out)
        facts = Dom0Facts(
            xen_version=f"{fields.get('xen_major', '?')}.{fields.get('xen_minor', '?')}",
            free_memory_mib=int(fields.get("free_memory", "0") or 0),
            nr_cpus=int(fields.get("nr_cpus", "0") or 0),
        )
        problems = []
        br = self.opts.bridge
        probe = d.sh(_PROBE, br).out
        kv = dict(ln.split("=", 1) for ln in probe.splitlines() if "=" in ln)
        if kv.get("bridge") != "yes":
            what = "is not a bridge" if kv.get("bridge") == "notbridge" else "does not exist"
            problems.append(
                f"the bridge {br} for the domUs' vifs {what} (ip link add {br} type bridge && "
                f"ip link set {br} up; or give bridge=NAME)"
            )
        elif kv.get("bridge_up") != "up":
            problems.append(f"the bridge {br} is down (ip link set {br} up)")
        need_loops = 2 * n_guests
        if kv.get("loop_driver") != "yes":
            problems.append("there is no loop driver (modprobe loop): each domU's disks are "
                            "files on loop devices")
        elif kv.get("loop_control") != "yes":
            free = int(kv.get("loop_free", "0") or 0)
            if free < need_loops:
                problems.append(
                    f"{free} free loop devices for {n_guests} domUs that need {need_loops} "
                    f"(modprobe -r loop; modprobe loop max_loop={need_loops + 16})"
                )
        for tool in ("mkdir", "rm", "losetup", "ip"):
            if kv.get(f"has_{tool}") != "yes":
                problems.append(f"`{tool}` is missing")
        need_mem = n_guests * self.opts.memory_mib
        if facts.free_memory_mib and facts.free_memory_mib < need_mem:
            problems.append(
                f"Xen has {facts.free_memory_mib} MiB free; {n_guests} domUs of "
                f"{self.opts.memory_mib} MiB need {need_mem} (lower memory= or --guests, or "
                "give dom0 less with dom0_mem=)"
            )
        if problems:
            raise UserError(f"{where} is not ready for {n_guests} domUs: " + "; ".join(problems))
        facts.bridge_addresses = kv.get("bridge_addrs", "").split()
        return facts

    # -- prepare -----------------------------------------------------------------------------

    def _record(self, target: str, **kwargs: Any) -> None:
        assert self.ctx is not None
        res = self.ctx.state.record(
            "callback", target=f"harness.backends.xen:{target}",
            kwargs={"target": self.target.as_kwargs(), **kwargs},
        )
        with self._lock:
            self._resources.append(res)

    def prepare(self, image: Image, ctx: RunContext) -> None:
        self.ctx, self.image = ctx, image
        if self.facts is None:
            self.check(image, 1)
        d = self._connect()
        self.run_dir = posixpath.join(self.opts.workdir, "runs", ctx.run_id)
        self._record("remove_path", path=self.run_dir)
        d.check(["mkdir", "-p", self.run_dir], "making the run directory")
        if self.target.local:
            files = {k: str(v) for k, v in bundle_sources(image).items()}
        else:
            files = self._ensure_bundle(d, image)
        # Real paths: xenstore, losetup and the journal then all name a file the same way.
        real = d.check(["readlink", "-f", *files.values()], "resolving the image paths")
        self.files = dict(zip(files, real.splitlines(), strict=True))
        self._bridge_address(d, ctx)
        if isinstance(d, RemoteDom0):
            self.jump = Jump(self.target.host, self.target.port, self.target.user,
                             d.server_key_line(), identity_file=self.target.key)
            self.jump_clients = {self.jump: d.jump_client}
        (ctx.run_dir / "xen").mkdir(exist_ok=True)

    def _ensure_bundle(self, d: Dom0, image: Image) -> dict[str, str]:
        """The image, kernel and initramfs on dom0, copied once per build (by digest)."""
        assert self.ctx is not None
        bid = bundle_id(image)
        cache = posixpath.join(self.opts.workdir, "cache")
        final = posixpath.join(cache, bid)
        files = {name: posixpath.join(final, name) for name in BUNDLE_FILES}
        if d.run(["test", "-e", posixpath.join(final, "complete")]).rc == 0:
            return files
        partial = posixpath.join(cache, f".partial-{bid}-{self.ctx.run_id}")
        self._record("remove_path", path=partial)
        d.check(["mkdir", "-p", partial], "making the image cache")
        for name, src in bundle_sources(image).items():
            d.put(src, posixpath.join(partial, name))
        d.check(["sh", "-c", 'chmod 0444 "$1"/* && touch "$1/complete" && '
                 'mv -T "$1" "$2" 2>/dev/null || rm -rf "$1"', "sh", partial, final],
                "storing the image on dom0")
        if d.run(["test", "-e", posixpath.join(final, "complete")]).rc != 0:
            raise LabError(f"the image did not land in {final} on dom0 {d.label}")
        return files

    def _bridge_address(self, d: Dom0, ctx: RunContext) -> None:
        """Give dom0 an address in the lab subnet on the bridge, unless it has one."""
        subnet = ipaddress.IPv4Network(ctx.options["subnet"])
        have = [ipaddress.IPv4Interface(a) for a in (self.facts.bridge_addresses
                                                     if self.facts else [])]
        if any(a.ip in subnet for a in have):
            return
        routes = json.loads(d.run(["ip", "-j", "-4", "route", "show"]).out or "[]")
        for r in routes:
            dst = r.get("dst", "")
            if dst in ("", "default") or r.get("dev") == self.opts.bridge:
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.IPv4Network(dst, strict=False).overlaps(subnet):
                    raise UserError(f"the lab subnet {subnet} overlaps dom0's route {dst} on "
                                    f"{r.get('dev')}: choose another with --subnet")
        cidr = ctx.options["subnet_gateway"]
        self._record("remove_address", bridge=self.opts.bridge, cidr=cidr)
        d.check(["ip", "addr", "add", cidr, "dev", self.opts.bridge],
                f"adding {cidr} to {self.opts.bridge}")
        self._address = cidr

    # -- up ----------------------------------------------------------------------------------

    def config_for(self, spec: GuestSpec, disk: str) -> DomainConfig:
        assert self.ctx is not None
        vcpus = max(1, math.ceil(spec.cpus)) if spec.cpus else self.opts.vcpus
        memory = _mib(spec.memory) if spec.memory else self.opts.memory_mib
        return DomainConfig(
            name=domain_name(self.ctx.run_id, spec.name),
            guest=spec.name,
            run_id=self.ctx.run_id,
            kernel=self.files["vmlinuz"],
            ramdisk=self.files["initrd.img"],
            extra=guest_cmdline(spec, systemd=self.opts.init == "systemd",
                                extra=self.opts.cmdline),
            memory_mib=memory,
            vcpus=vcpus,
            disks=(
                disk_spec("xvda", "ro", self.files["base.img"]),
                disk_spec("xvdb", "rw", disk),
            ),
            vifs=(vif_spec(spec.mac, self.opts.bridge),),
        )

    def _create_one(self, spec: GuestSpec) -> _Domain:
        """Writable disk, config, ``xl create``: one domU, its phases recorded."""
        assert self.ctx is not None and self.dom0 is not None
        ctx, d = self.ctx, self.dom0
        t0 = now_ns()
        disk = posixpath.join(self.run_dir, f"{spec.name}.img")
        cfg_path = posixpath.join(self.run_dir, f"{spec.name}.cfg")
        self._record("remove_path", path=disk)
        size = self.opts.disk_mib << 20
        if self.target.local:
            make_guest_disk(spec, ctx.client_public_key, Path(disk), size)
        else:
            with tempfile.TemporaryDirectory(prefix="scalelab-xen-") as tmp:
                local = Path(tmp) / "disk.img"
                make_guest_disk(spec, ctx.client_public_key, local, size)
                d.put(local, disk)
        cfg = self.config_for(spec, disk)
        text = render_config(cfg)
        (ctx.run_dir / "xen" / f"{spec.name}.cfg").write_text(text)
        self._record("remove_path", path=cfg_path)
        d.write_text(cfg_path, text)
        dom = _Domain(spec.name, cfg.name, cfg_path, disk)
        t1 = now_ns()
        ctx.on_phase(spec.name, "created", t0, t1)
        self._record("destroy_domain", name=cfg.name)
        with self._lock:
            self.domains[spec.name] = dom
        files = [self.files["base.img"], disk]
        before = {dev for dev, _ in loops_on(d, files)}
        for attempt in (1, 2):
            res = d.run(["xl", "create", cfg_path], timeout=CREATE_TIMEOUT)
            if res.rc == 0:
                break
            # Take down what xl may have left, and the loop devices it attached for this
            # attempt (libxl does not always detach them when a hotplug script failed).
            with contextlib.suppress(LabError):
                destroy_on(d, cfg.name)
                stray = [[dev, f] for dev, f in loops_on(d, files) if dev not in before]
                if stray:
                    _release(d, stray)
            if attempt == 2 or not any(m in res.err for m in TRANSIENT):
                raise _CreateFailed(spec.name, cfg.name, res.message())
            dom.retries += 1
        ctx.on_phase(spec.name, "started", t1, now_ns())
        # libxl's block script sometimes leaves a loop device behind on destroy (it reads
        # the device back from xenstore, racing the removal): note this domU's own.
        dom.loops = domain_loops(d, cfg.name)
        if dom.loops:
            self._record("release_loops", loops=dom.loops)
        return dom

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        assert self.ctx is not None and self.dom0 is not None
        failures: list[_CreateFailed] = []
        created: list[_Domain] = []
        workers = max(1, min(self.opts.parallel, len(specs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xl-create") as pool:
            futures = [(s, pool.submit(self._create_one, s)) for s in specs]
            for spec, fut in futures:
                try:
                    created.append(fut.result())
                except _CreateFailed as exc:
                    failures.append(exc)
                except Exception as exc:
                    failures.append(_CreateFailed(spec.name, domain_name(self.ctx.run_id,
                                                                         spec.name), str(exc)))
        if failures:
            first = failures[0]
            # Half-way: take down the domUs already created before saying what failed (and
            # whatever xl may have left of the failed ones).
            for dom in created:
                self._destroy(dom)
            for f in failures:
                with contextlib.suppress(LabError):
                    destroy_on(self.dom0, f.domain)
            more = f" ({len(failures) - 1} more failed)" if len(failures) > 1 else ""
            raise LabError(
                f"xl create of domU {first.domain} (guest {first.guest}) failed on dom0 "
                f"{self.dom0.label}: {first.message}{more}; the {len(created)} domU(s) "
                "already created were destroyed"
            )
        ids = self.domain_ids()
        guests = []
        for spec in specs:
            dom = self.domains[spec.name]
            dom.domid = ids.get(dom.name)
            if dom.domid is None:
                raise LabError(f"domU {dom.name} is not in `xl list` right after `xl create` "
                               f"(crashed at once?): see its console on dom0 {self.dom0.label}")
            guests.append(Guest(spec, spec.address, 22, jump=self.jump,
                                lab_host=self.target.host or "local",
                                info={"domain": dom.name, "domid": dom.domid, "disk": dom.disk,
                                      "create_retries": dom.retries}))
        self.guests += guests
        return guests

    def domain_ids(self) -> dict[str, int]:
        """Domain name → domid of every domain dom0 runs (from ``xl list -l``, JSON)."""
        assert self.dom0 is not None
        res = self.dom0.run(["xl", "list", "-l"], timeout=SHORT_TIMEOUT)
        if res.rc != 0:
            raise LabError(f"xl list -l on dom0 {self.dom0.label}: {res.message()}")
        return parse_xl_list_long(res.out)

    def states(self) -> dict[str, str]:
        """Domain name → xl's state letters (``r-----``, ``--p---``...)."""
        assert self.dom0 is not None
        return {name: row[4] for name, row in self._xl_list().items()}

    def _xl_list(self) -> dict[str, list[str]]:
        assert self.dom0 is not None
        out = self.dom0.check(["xl", "list"], "xl list")
        rows = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 6:
                rows[cols[0]] = cols
        return rows

    # -- down --------------------------------------------------------------------------------

    def _destroy(self, dom: _Domain) -> str | None:
        """Destroy one domU of this run; a problem met is returned, not raised."""
        assert self.dom0 is not None
        try:
            destroy_on(self.dom0, dom.name)
        except LabError as exc:
            return str(exc)
        _DONE.add((self.target.pool_key, "domain", dom.name))
        if dom.loops:
            _DONE.add((self.target.pool_key, "loops", tuple(map(tuple, dom.loops))))
        return None

    def down(self) -> list[str]:
        if self.dom0 is None or self.ctx is None:
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
                _DONE.add((self.target.pool_key, "domain", d.name))
        if doomed:
            workers = max(1, min(self.opts.parallel, len(doomed)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xl-destroy") as p:
                problems += [m for m in p.map(self._destroy, doomed) if m]
        if not problems:
            # Every domU is gone: loops, files and the address can go (newest first).
            for res in reversed(list(self._resources_of(
                    "release_loops", "remove_path", "remove_address"))):
                met = teardown([res])
                problems += met
                if not met:
                    _DONE.add(_done_key(self.target, res))
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
        if self.facts is not None:
            out["xen_version"] = self.facts.xen_version
            out["dom0_cpus"] = self.facts.nr_cpus
        return out

    def guest_memory(self, guest: Guest) -> int | None:
        row = self._xl_list().get(str(guest.info.get("domain")))
        return int(row[2]) << 20 if row else None

    def upper_bytes(self, guest: Guest) -> int | None:
        value = self.footprint([guest]).get(guest.name, {}).get("upper_bytes")
        return int(value[0]) if value else None

    def footprint(self, guests: Sequence[Guest]) -> dict[str, dict[str, tuple[float, str]]]:
        """Per guest: memory Xen gives the domU and the blocks its writable disk holds."""
        if self.dom0 is None:
            return {}
        rows = self._xl_list()
        disks = {str(g.info.get("disk")): g.name for g in guests if g.info.get("disk")}
        used: dict[str, int] = {}
        if disks:
            out = self.dom0.run(["du", "-k", *disks]).out
            for line in out.splitlines():
                kib, _, path = line.partition("\t")
                if path in disks and kib.isdigit():
                    used[disks[path]] = int(kib) * 1024
        result: dict[str, dict[str, tuple[float, str]]] = {}
        for g in guests:
            values: dict[str, tuple[float, str]] = {}
            row = rows.get(str(g.info.get("domain")))
            if row is not None:
                values["memory_bytes"] = (float(int(row[2]) << 20), "B")
            if g.name in used:
                values["upper_bytes"] = (float(used[g.name]), "B")
            result[g.name] = values
        return result

    # -- faults ------------------------------------------------------------------------------

    def _xl(self, verb: str, guest: Guest) -> None:
        assert self.dom0 is not None
        self.dom0.check(["xl", verb, str(guest.info["domain"])], f"xl {verb} {guest.name}",
                        timeout=CREATE_TIMEOUT)

    def kill(self, guest: Guest) -> None:
        assert self.dom0 is not None
        destroy_on(self.dom0, str(guest.info["domain"]))

    def pause(self, guest: Guest) -> None:
        self._xl("pause", guest)

    def resume(self, guest: Guest) -> None:
        self._xl("unpause", guest)

    def _vif(self, guest: Guest) -> str:
        return f"vif{guest.info['domid']}.0"

    def isolate(self, guests: Sequence[Guest]) -> None:
        """Cut ``guests`` off the bridge by taking their vif down in dom0."""
        assert self.dom0 is not None
        for g in guests:
            self.dom0.check(["ip", "link", "set", self._vif(g), "down"], f"isolating {g.name}")
            self._isolated.add(g.name)

    def heal(self) -> None:
        assert self.dom0 is not None
        by_name = {g.name: g for g in self.guests}
        for name in sorted(self._isolated):
            self.dom0.check(["ip", "link", "set", self._vif(by_name[name]), "up"],
                            f"healing {name}")
        self._isolated.clear()


class _CreateFailed(Exception):
    def __init__(self, guest: str, domain: str, message: str) -> None:
        super().__init__(f"{domain}: {message}")
        self.guest, self.domain, self.message = guest, domain, message


#: One round trip that tells what dom0 has: bridge, loop devices, tools.
_PROBE = r"""
br=$1
if [ -d "/sys/class/net/$br/bridge" ]; then echo bridge=yes
elif [ -e "/sys/class/net/$br" ]; then echo bridge=notbridge
else echo bridge=no; fi
if [ -e "/sys/class/net/$br" ] && ip link show "$br" | grep -q ',UP'; then echo bridge_up=up; fi
echo bridge_addrs=$(ip -o -4 addr show dev "$br" 2>/dev/null | sed -n 's/.* inet \([^ ]*\).*/\1/p')
if [ -d /sys/module/loop ] || [ -e /dev/loop-control ]; then echo loop_driver=yes; fi
[ -e /dev/loop-control ] && echo loop_control=yes
total=$(ls /dev | grep -c '^loop[0-9][0-9]*$')
used=$(losetup -n -O NAME 2>/dev/null | wc -l)
echo loop_free=$((total - used))
for t in mkdir rm losetup ip; do command -v $t >/dev/null 2>&1 && echo has_$t=yes; done
"""


def _xl_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def parse_xl_list_long(text: str) -> dict[str, int]:
    """``xl list -l`` JSON → domain name → domid."""
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise LabError(f"xl list -l did not print JSON: {exc}") from None
    out = {}
    for entry in data if isinstance(data, list) else []:
        name = entry.get("config", {}).get("c_info", {}).get("name")
        if name is not None and entry.get("domid") is not None:
            out[str(name)] = int(entry["domid"])
    return out


def _mib(size: str) -> int:
    return max(32, parse_size(size, "memory size") >> 20)


# -- recording dom0's host key once, on purpose ---------------------------------------------
