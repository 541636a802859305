"""The netns backend: each guest is a set of namespaces around an overlayfs root and sshd.

Per run: the image is loop-mounted read-only once, a tmpfs holds every guest's upper layer
(or a directory on disk with ``upper=disk``), and a bridge joins the guests to the host.
Per guest: a named network namespace with a veth on the bridge, a cgroup, and a process
started as ``nsenter --net=… unshare --mount --uts --pid --fork`` running a short shell
script as the namespace's PID 1. The script joins the cgroup, configures eth0, mounts the
overlay root with /proc, /dev and /sys, pivots into it (dropping every host mount from its
view) and execs sshd. When PID 1 dies the kernel kills the rest of the guest and its mount
namespace (with the overlay) disappears with it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.backends.base import Backend, Guest, RunContext, now_ns
from harness.errors import UserError
from harness.guestfiles import write_guest_files
from harness.identity import GuestSpec, run_tag
from harness.image.cache import Image
from harness.plumbing import host, nft, tc
from harness.plumbing.units import parse_size
from harness.state import proc_start_time, teardown

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: A Linux bridge takes at most 1023 ports; beyond this many guests per bridge, further
#: guests go on segment bridges joined to the lab bridge by a veth pair (one L2 network).
PORTS_PER_BRIDGE = 1000
V1_CONTROLLERS = ("memory", "cpu", "pids", "freezer")


class Cgroups:
    """Per-guest cgroups on v1 (one directory per controller) or v2 (one directory)."""

    def __init__(self, run_id: str) -> None:
        self.v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        self.base = f"scalelab/{run_id}"

    def paths(self, guest: str) -> list[Path]:
        if self.v2:
            return [CGROUP_ROOT / self.base / guest]
        return [
            CGROUP_ROOT / c / self.base / guest
            for c in V1_CONTROLLERS
            if (CGROUP_ROOT / c).is_dir()
        ]

    def run_dirs(self) -> list[Path]:
        """The run-level parent directories (removed after the guests')."""
        if self.v2:
            return [CGROUP_ROOT / self.base, CGROUP_ROOT / "scalelab"]
        out = []
        for c in V1_CONTROLLERS:
            if (CGROUP_ROOT / c).is_dir():
                out += [CGROUP_ROOT / c / self.base]
        return out

    def create(self, guest: str, memory: str | None, cpus: float | None) -> list[Path]:
        paths = self.paths(guest)
        if self.v2:
            top = CGROUP_ROOT / "scalelab"
            top.mkdir(exist_ok=True)
            for d in (CGROUP_ROOT, top, CGROUP_ROOT / self.base):
                d.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    (d / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        for p in paths:
            p.mkdir(parents=True, exist_ok=True)
        if memory:
            limit = str(parse_size(memory, "memory size"))
            if self.v2:
                (paths[0] / "memory.max").write_text(limit)
            else:
                (CGROUP_ROOT / "memory" / self.base / guest / "memory.limit_in_bytes").write_text(
                    limit
                )
        if cpus:
            period = 100_000
            quota = int(cpus * period)
            if self.v2:
                (paths[0] / "cpu.max").write_text(f"{quota} {period}")
            else:
                cpu = CGROUP_ROOT / "cpu" / self.base / guest
                (cpu / "cpu.cfs_period_us").write_text(str(period))
                (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        return paths

    def memory_bytes(self, guest: str) -> int | None:
        f = (
            CGROUP_ROOT / self.base / guest / "memory.current"
            if self.v2
            else CGROUP_ROOT / "memory" / self.base / guest / "memory.usage_in_bytes"
        )
        try:
            return int(f.read_text())
        except (OSError, ValueError):
            return None

    def freeze(self, guest: str, frozen: bool) -> None:
        if self.v2:
            (CGROUP_ROOT / self.base / guest / "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            state = CGROUP_ROOT / "freezer" / self.base / guest / "freezer.state"
            state.write_text("FROZEN" if frozen else "THAWED")


class NetnsBackend(Backend):
    name = "netns"
    faults = frozenset({"kill", "pause", "isolate", "partition", "bandwidth"})

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.ctx: RunContext | None = None
        self.image: Image | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._resources: list[Any] = []
        self._isolated: set[str] = set()
        self._partitioned = False

    # -- names ---------------------------------------------------------------------------

    @property
    def tag(self) -> str:
        assert self.ctx is not None
        return run_tag(self.ctx.run_id)

    @property
    def bridge(self) -> str:
        return self.options.get("bridge") or f"slb-{self.tag}"

    def segment_bridge(self, spec: GuestSpec) -> str:
        k = spec.index // PORTS_PER_BRIDGE
        return self.bridge if k == 0 else f"{self.bridge}-{k}"

    def _add_segments(self, specs: Sequence[GuestSpec]) -> list[str]:
        """ip-batch lines for the segment bridges these guests need (beyond the first)."""
        lines: list[str] = []
        for k in sorted({s.index // PORTS_PER_BRIDGE for s in specs} - {0}):
            seg = f"{self.bridge}-{k}"
            if Path(f"/sys/class/net/{seg}").exists():
                continue
            uplink = f"slu{self.tag}{k:x}"
            self._record("link", name=seg)
            self._record("link", name=uplink)
            lines += [
                f"link add {seg} type bridge",
                f"link add {uplink} type veth peer name {uplink}p",
                f"link set {uplink} master {self.bridge} up",
                f"link set {uplink}p master {seg} up",
                f"link set {seg} up",
            ]
        return lines

    def netns_name(self, spec: GuestSpec) -> str:
        return f"sl-{self.tag}-{spec.name}"

    def veth_name(self, spec: GuestSpec) -> str:
        return f"slv{self.tag}{spec.index:x}"  # at most 15 characters for 16M guests

    # -- lifecycle -----------------------------------------------------------------------

    def check(self, image: Image, n_guests: int) -> None:
        if os.geteuid() != 0:
            raise UserError("the netns backend needs root (namespaces, mounts, veth): run as root")
        for tool in ("ip", "nsenter", "unshare", "mount"):
            if shutil.which(tool) is None:
                raise UserError(
                    f"the netns backend needs `{tool}`: apt-get install iproute2 util-linux"
                )
        upper = self.options.get("upper", "tmpfs")
        if upper not in ("tmpfs", "disk"):
            raise UserError(f"netns option upper={upper!r}: use upper=tmpfs or upper=disk")
        bridge = self.options.get("bridge")
        if bridge and Path(f"/sys/class/net/{bridge}").exists():
            raise UserError(
                f"bridge {bridge} already exists and is not this run's: choose another name"
            )
        image.check()

    def _record(self, kind: str, **attrs: Any) -> None:
        assert self.ctx is not None
        self._resources.append(self.ctx.state.record(kind, **attrs))

    def prepare(self, image: Image, ctx: RunContext) -> None:
        self.ctx, self.image = ctx, image
        sdir = ctx.state.dir
        base = sdir / "base"
        base.mkdir()
        # mount -o loop sets autoclear: the loop device goes away with the mount.
        self._record("mount", path=str(base))
        host.check(["mount", "-o", "loop,ro,noload", str(image.path), str(base)])
        rw = sdir / "rw"
        if self.options.get("upper", "tmpfs") == "disk":
            rw = Path(self.options.get("upper_dir", "/var/lib/scalelab")) / ctx.run_id
            self._record("dir", path=str(rw))
            rw.mkdir(parents=True)
        else:
            rw.mkdir()
            self._record("mount", path=str(rw))
            host.check(["mount", "-t", "tmpfs", "-o", "mode=0755", "scalelab-rw", str(rw)])
        self.rw = rw
        self.cgroups = Cgroups(ctx.run_id)
        for d in self.cgroups.run_dirs():
            self._record("cgroup", paths=[str(d)])
        if Path(f"/sys/class/net/{self.bridge}").exists():
            raise UserError(f"bridge {self.bridge} already exists and is not this run's")
        self._record("link", name=self.bridge)
        assert ctx.options.get("subnet_gateway")
        host.ip_batch(
            [
                f"link add {self.bridge} type bridge",
                f"addr add {ctx.options['subnet_gateway']} dev {self.bridge}",
                f"link set {self.bridge} up",
            ]
        )

    def _fstab(self, spec: GuestSpec, upper: Path, work: Path, root: Path) -> Path:
        """The guest's mounts, in order: overlay root, then /proc, /dev (rbind), /sys."""
        assert self.ctx is not None
        base = self.ctx.state.dir / "base"
        fstab = upper.parent / "fstab"
        fstab.write_text(
            f"overlay {root} overlay lowerdir={base},upperdir={upper},workdir={work} 0 0\n"
            f"proc {root}/proc proc defaults 0 0\n"
            f"/dev {root}/dev none rbind 0 0\n"
            f"sysfs {root}/sys sysfs defaults 0 0\n"
        )
        return fstab

    def _init_script(self, spec: GuestSpec, upper: Path, work: Path, root: Path) -> str:
        """PID 1 of the guest, run by the host's /bin/sh until it pivots into the overlay."""
        assert self.image is not None and self.ctx is not None
        q = shlex.quote
        procs = " ".join(q(str(p / "cgroup.procs")) for p in self.cgroups.paths(spec.name))
        services = self.image.services
        lines = [
            "set -e",
            f"for f in {procs}; do echo $$ > $f; done",
            "ip -batch - <<EOF",
            "link set lo up",
            f"addr add {spec.ip} dev eth0",
            "link set eth0 up",
            "EOF",
            f"echo {q(spec.name)} > /proc/sys/kernel/hostname",
            # The overlay root and its /proc, /dev and /sys from one fstab: one `mount`
            # process instead of four (each exec costs tens of ms on a loaded host).
            f"mount --all --fstab {q(str(self._fstab(spec, upper, work, root)))}",
            f"cd {root}",
            # Swap roots and drop the old one: the guest keeps no view of the host's mounts
            # (nor pins other guests' namespaces through them).
            "pivot_root . mnt",
            "cd /",
            "umount -l /mnt",
        ]
        sshd = "/usr/sbin/sshd -D -e -f /etc/scalelab/sshd_config"
        if services:
            lines.append(f"{sshd} &")
            lines.append("sshd_pid=$!")
            for i, svc in enumerate(services):
                # The service's output goes to the guest's log on the host, line-prefixed.
                lines.append(
                    f"(/bin/sh -c {q(svc)} </dev/null 2>&1 | "
                    f"while IFS= read -r l; do echo \"[service {i}] $l\"; done) &"
                )
            # PID 1 lives as long as sshd, reaping every orphan meanwhile (dash's wait).
            lines.append('wait "$sshd_pid"')
        else:
            lines.append(f"exec {sshd}")
        return "\n".join(lines) + "\n"

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        assert self.ctx is not None
        ctx = self.ctx
        logs = ctx.run_dir / "guests"
        logs.mkdir(parents=True, exist_ok=True)
        t_created = now_ns()
        # One journal line per resource before anything exists, then one `ip` for all links.
        batch = self._add_segments(specs)
        for spec in specs:
            ns, veth = self.netns_name(spec), self.veth_name(spec)
            self._record("netns", name=ns)
            self._record("link", name=veth, netns=ns)
            batch += [
                f"netns add {ns}",
                f"link add {veth} type veth peer name eth0 address {spec.mac} netns {ns}",
                f"link set {veth} master {self.segment_bridge(spec)} up",
                # Static neighbour entries: the host never waits on ARP for a guest that
                # has not configured eth0 yet, and 1024 guests do not overflow the table.
                f"neigh replace {spec.address} lladdr {spec.mac} dev {self.bridge} nud permanent",
            ]
        host.ip_batch(batch)
        guests = []
        for spec in specs:
            gdir = self.rw / spec.name
            upper, work, root = gdir / "upper", gdir / "work", gdir / "root"
            for d in (upper, work, root):
                d.mkdir(parents=True)
            write_guest_files(spec, ctx.client_public_key, upper)
            self._record("cgroup", paths=[str(p) for p in self.cgroups.paths(spec.name)])
            self.cgroups.create(spec.name, spec.memory, spec.cpus)
            t_created_end = now_ns()
            ctx.on_phase(spec.name, "created", t_created, t_created_end)
            script = self._init_script(spec, upper, work, root)
            log = open(logs / f"{spec.name}.log", "wb")  # noqa: SIM115 - owned by the child
            try:
                proc = subprocess.Popen(
                    [
                        "nsenter", f"--net=/run/netns/{self.netns_name(spec)}", "--",
                        "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                        "--propagation", "private", "--",
                        "/bin/sh", "-c", script,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
                )
            finally:
                log.close()
            self._record("process", pid=proc.pid, start=proc_start_time(proc.pid))
            self._procs[spec.name] = proc
            t_started = now_ns()
            ctx.on_phase(spec.name, "started", t_created_end, t_started)
            t_created = t_started
            guests.append(Guest(spec, spec.address, 22, info={"upper": str(upper)}))
            ctx.on_started(guests[-1])
        self.guests = guests
        return guests

    def down(self) -> list[str]:
        problems = teardown(reversed(self._resources))
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self._procs.clear()
        self._resources.clear()
        return problems

    # -- measurements ----------------------------------------------------------------------

    def guest_memory(self, guest: Guest) -> int | None:
        return self.cgroups.memory_bytes(guest.name)

    def footprint(self, guests: Sequence[Guest]) -> dict[str, dict[str, tuple[float, str]]]:
        """Per guest: memory charged to its cgroup and the blocks its upper layer uses."""
        uppers = {str(g.info["upper"]): g.name for g in guests if g.info.get("upper")}
        used: dict[str, int] = {}
        if uppers:
            # One du for every guest: allocated blocks, what the copy-on-write layer costs.
            out = host.run(["du", "-sk", *uppers])
            for line in out.stdout.splitlines():
                kib, _, path = line.partition("\t")
                if path in uppers:
                    used[uppers[path]] = int(kib) * 1024
        result: dict[str, dict[str, tuple[float, str]]] = {}
        for g in guests:
            values: dict[str, tuple[float, str]] = {}
            if g.name in used:
                values["upper_bytes"] = (float(used[g.name]), "B")
            mem = self.cgroups.memory_bytes(g.name)
            if mem is not None:
                values["memory_bytes"] = (float(mem), "B")
            result[g.name] = values
        return result

    # -- faults ----------------------------------------------------------------------------

    def dead(self, guest: Guest) -> str | None:
        proc = self._procs.get(guest.name)
        if proc is None or proc.poll() is None:
            return None
        return f"the guest's init exited with status {proc.returncode} (see its log)"

    def kill(self, guest: Guest) -> None:
        for p in self.cgroups.paths(guest.name):
            # Kill the processes but keep the (now empty) cgroup for teardown to remove.
            with contextlib.suppress(OSError):
                for pid in (p / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), 9)
        proc = self._procs.get(guest.name)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)

    def pause(self, guest: Guest) -> None:
        self.cgroups.freeze(guest.name, True)

    def resume(self, guest: Guest) -> None:
        self.cgroups.freeze(guest.name, False)

    def isolate(self, guests: Sequence[Guest]) -> None:
        """Cut ``guests`` off the lab bridge (from the host and every other guest)."""
        lines = []
        for g in guests:
            lines.append(f"link set {self.veth_name(g.spec)} down")
            self._isolated.add(g.name)
        host.ip_batch(lines)

    @property
    def nft_table(self) -> str:
        return f"slp-{self.tag}"

    def partition(self, side_a: Sequence[Guest], side_b: Sequence[Guest]) -> None:
        """Drop bridged traffic between two groups with nftables (bridge family)."""
        ruleset = nft.partition_ruleset(
            self.nft_table, [self.veth_name(g.spec) for g in side_a],
            [self.veth_name(g.spec) for g in side_b])
        if not self._partitioned:
            self._record("nft", family="bridge", table=self.nft_table)
        nft.apply(ruleset)
        self._partitioned = True

    def heal(self) -> None:
        by_name = {g.name: g for g in self.guests}
        host.ip_batch(
            [f"link set {self.veth_name(by_name[n].spec)} up" for n in sorted(self._isolated)]
        )
        self._isolated.clear()
        if self._partitioned:
            nft.delete_table("bridge", self.nft_table)
            self._partitioned = False

    def limit_bandwidth(self, guest: Guest, rate: str) -> None:
        # tbf on both ends: host→guest on the host-side veth, guest→host inside the guest.
        tc.limit_rate(self.veth_name(guest.spec), rate)
        tc.limit_rate("eth0", rate, netns=self.netns_name(guest.spec))

    def unlimit_bandwidth(self, guest: Guest) -> None:
        tc.clear(self.veth_name(guest.spec))
        tc.clear("eth0", netns=self.netns_name(guest.spec))



def attach(run: str | None, names: Sequence[str]) -> tuple[NetnsBackend, Any]:
    """A backend handle on the netns lab of a run left up that holds ``names`` (for
    ``scalelab fault``), and a recorder that appends to that run's timing stream."""
    import ipaddress

    from harness.identity import make_specs
    from harness.runs import find_run, newest_kept_run
    from harness.store import Context, Store

    chosen = find_run(run) if run else newest_kept_run()
    if chosen is None:
        raise UserError("no run is kept up here (see `scalelab ls`; --run names one)")
    labs = [lab for lab in chosen.labs
            if lab.state.header.get("backend") == "netns" and not lab.is_shard]
    holding = [lab for lab in labs if set(names) & set(lab.guest_names())]
    if len(holding) > 1:
        raise UserError(f"the guests named are in {len(holding)} labs of run {chosen.run_id} "
                        f"({', '.join(lab.name for lab in holding)}): one lab at a time")
    if holding or len(labs) == 1:
        entry = (holding or labs)[0]
    else:
        known = "; ".join(f"{lab.name}: {', '.join(lab.guest_names()[:3])}…" for lab in labs)
        raise UserError(f"no netns lab of run {chosen.run_id} holds "
                        f"{' '.join(names) or 'the guests'} ({known or 'it has none'})")
    missing = sorted(set(names) - set(entry.guest_names()))
    if missing:
        raise UserError(f"no guest {', '.join(map(repr, missing))} in lab {entry.name} of run "
                        f"{chosen.run_id}")
    state, inventory = entry.state, entry.inventory()
    run_dir = Path(str(state.header.get("run_dir")))
    backend = NetnsBackend(inventory.get("backend_options", {}))
    backend.ctx = RunContext(state.run_id, state, entry.lab_dir or run_dir, "")
    backend.cgroups = Cgroups(state.run_id)
    backend._partitioned = any(r.kind == "nft" for r in state.resources)
    subnet = ipaddress.IPv4Network(inventory["subnet"])
    specs = make_specs(state.run_id, len(inventory["guests"]), subnet,
                       prefix=str(inventory.get("name_prefix", "g")))
    backend.guests = [Guest(s, s.address) for s in specs]
    backend._isolated = {g.name for g in backend.guests}  # heal brings every link up
    store = Store(run_dir, Context(run_id=chosen.run_id, scenario="manual-faults",
                                   lab=entry.name))
    return backend, store.scoped()
