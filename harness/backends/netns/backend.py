"""``NetnsBackend``: each guest is a set of namespaces around an overlayfs root and sshd.

Per run (``prepare``): the image is loop-mounted read-only once, a tmpfs holds every guest's
upper layer (or a directory on disk with ``upper=disk``), and a bridge joins the guests to
the host.  Per guest (``up``): a named network namespace with a veth on the bridge, a cgroup,
and a process started as ``nsenter --net=… unshare --mount --uts --pid --fork`` running
:func:`~harness.backends.netns.guestinit.init_script` as the namespace's PID 1.  When PID 1
dies the kernel kills the rest of the guest, and its mount namespace (with the overlay)
disappears with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.backends.base import Backend, Footprint, Guest, GuestShell, RunContext, now_ns
from harness.backends.netns import degrade
from harness.backends.netns.guestinit import GuestDirs, fstab_text, init_script
from harness.backends.netns.labrun import NetnsRun
from harness.backends.netns.options import NetnsOptions
from harness.degrade import Shaping
from harness.errors import LabError, UserError
from harness.guestfiles import write_guest_files
from harness.identity import GuestSpec
from harness.image.cache import Image
from harness.plumbing import host, nft, tc
from harness.state import Resource, RunState, proc_start_time, teardown
from harness.telemetry.links import link_samples, read_net_dev
from harness.telemetry.sample import Sample


class NetnsBackend(Backend):
    name = "netns"
    faults = frozenset({"kill", "pause", "isolate", "partition", "bandwidth", "degrade"})

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.opts = NetnsOptions.parse(self.options)
        self._run: NetnsRun | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._resources: list[Resource] = []
        self._isolated: set[str] = set()
        self._partitioned = False

    @property
    def run(self) -> NetnsRun:
        """This run's names and places (what ``prepare`` returned)."""
        if self._run is None:
            raise LabError("the netns backend is not prepared: call prepare() first")
        return self._run

    @property
    def bridge(self) -> str:
        return self.run.bridge

    # -- lifecycle -----------------------------------------------------------------------

    def check(self, image: Image, n_guests: int) -> None:
        if os.geteuid() != 0:
            raise UserError("the netns backend needs root (namespaces, mounts, veth): run as root")
        for tool in ("ip", "nsenter", "unshare", "mount"):
            if shutil.which(tool) is None:
                raise UserError(
                    f"the netns backend needs `{tool}`: apt-get install iproute2 util-linux"
                )
        bridge = self.opts.bridge
        if bridge and Path(f"/sys/class/net/{bridge}").exists():
            raise UserError(
                f"bridge {bridge} already exists and is not this run's: choose another name"
            )
        image.check()

    def _record(self, kind: str, **attrs: Any) -> None:
        self._resources.append(self.run.ctx.state.record(kind, **attrs))

    def prepare(self, image: Image, ctx: RunContext) -> NetnsRun:
        run = self._run = NetnsRun.of(ctx, self.opts, tuple(image.services))
        run.base.mkdir()
        # mount -o loop sets autoclear: the loop device goes away with the mount.
        self._record("mount", path=str(run.base))
        host.check(["mount", "-o", "loop,ro,noload", str(image.path), str(run.base)])
        if self.opts.upper == "disk":
            self._record("dir", path=str(run.rw))
            run.rw.mkdir(parents=True)
        else:
            run.rw.mkdir()
            self._record("mount", path=str(run.rw))
            host.check(["mount", "-t", "tmpfs", "-o", "mode=0755", "scalelab-rw", str(run.rw)])
        self._make_mount_template(run)
        for d in run.cgroups.run_dirs():
            self._record("cgroup", paths=[str(d)])
        if Path(f"/sys/class/net/{run.bridge}").exists():
            raise UserError(f"bridge {run.bridge} already exists and is not this run's")
        self._record("link", name=run.bridge)
        host.ip_batch([
            f"link add {run.bridge} address {run.bridge_mac} type bridge",
            f"addr add {ctx.options['subnet_gateway']} dev {run.bridge}",
            f"link set {run.bridge} up",
        ])
        return run

    def _make_mount_template(self, run: NetnsRun) -> None:
        """The mount namespace the guests' own are copied from: this host's mounts (the
        image and upper layers included) without ``/run/netns``.

        ``unshare --mount`` copies every mount of the namespace it starts in.  Copied from
        this host's, each guest's copy held the bind mount of every guest's network
        namespace, and its ``pivot_root``'s lazy umount dropped them all again: O(N) work
        per guest, measured as ~27 µs × N of CPU — 4096 guests took 10 minutes, not 3.
        Kept as a file (unshare's persistent namespace) on a private bind mount, as
        ``ip netns`` keeps network namespaces, so it works where / is shared (systemd).
        """
        tmpl = run.mount_template
        tmpl.parent.mkdir()
        self._record("mount", path=str(tmpl.parent))
        host.check(["mount", "--bind", str(tmpl.parent), str(tmpl.parent)])
        host.check(["mount", "--make-private", str(tmpl.parent)])
        tmpl.touch()
        self._record("mount", path=str(tmpl))
        drop = ["umount", "-l", "/run/netns"] if host.mounted("/run/netns") else ["true"]
        host.check(["unshare", f"--mount={tmpl}", "--propagation", "private", "--", *drop])

    def _link_lines(self, specs: Sequence[GuestSpec]) -> list[str]:
        """``ip -batch`` lines for the guests' namespaces and veths (and the segment bridges
        they need beyond the first), each journalled before it exists."""
        run = self.run
        lines: list[str] = []
        for k in sorted({run.segment(s) for s in specs} - {0}):
            seg, uplink = run.segment_bridge(k), run.uplink(k)
            if Path(f"/sys/class/net/{seg}").exists():
                continue
            self._record("link", name=seg)
            self._record("link", name=uplink)
            lines += [
                f"link add {seg} type bridge",
                f"link add {uplink} type veth peer name {uplink}p",
                f"link set {uplink} addrgenmode none",
                f"link set {uplink}p addrgenmode none",
                f"link set {uplink} master {run.bridge} up",
                f"link set {uplink}p master {seg} up",
                f"link set {seg} up",
            ]
        for spec in specs:
            ns, veth = run.netns_name(spec), run.veth_name(spec)
            self._record("netns", name=ns)
            self._record("link", name=veth, netns=ns)
            lines += [
                f"netns add {ns}",
                f"link add {veth} type veth peer name eth0 address {spec.mac} netns {ns}",
                # No IPv6 link-local address on the lab's links (the guest's eth0 too, in
                # its init): coming up with one, a link sends DAD, router solicitations and
                # MLD reports to multicast groups, which the bridge floods to every port —
                # a quarter of the host's CPU in softirq in a 4096-guest bring-up.  The
                # lab's addresses are IPv4; loopback keeps ::1.
                f"link set {veth} addrgenmode none",
                f"link set {veth} master {run.segment_bridge(run.segment(spec))} up",
                # Static neighbour entries: the host never waits on ARP for a guest that
                # has not configured eth0 yet, and 1024 guests do not overflow the table.
                f"neigh replace {spec.address} lladdr {spec.mac} dev {run.bridge} nud permanent",
            ]
        return lines

    def _fdb_lines(self, specs: Sequence[GuestSpec]) -> list[str]:
        """``bridge -batch`` lines: each guest's MAC a static forwarding entry on its port
        (and, behind a segment bridge, on the lab bridge's uplink to that segment).

        A bridge floods a frame for a MAC it has not learned to every port, and a guest
        that has sent nothing yet (no IPv6 chatter, a static gateway entry) is unlearned:
        the host's first SYNs to it went to ~1000 veths at once, overflowing the kernel's
        1000-packet backlog, and the copies for the ports flooded last — the uplinks to
        the segment bridges — were dropped every time.  The entries die with their ports,
        so nothing is journalled for them."""
        run = self.run
        lines = []
        for spec in specs:
            lines.append(f"fdb replace {spec.mac} dev {run.veth_name(spec)} master static")
            if (k := run.segment(spec)) > 0:
                lines.append(f"fdb replace {spec.mac} dev {run.uplink(k)} master static")
        return lines

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        run, ctx = self.run, self.run.ctx
        logs = ctx.run_dir / "guests"
        logs.mkdir(parents=True, exist_ok=True)
        t_created = now_ns()
        # One journal line per resource before anything exists, then one `ip` for all links.
        host.ip_batch(self._link_lines(specs))
        host.bridge_batch(self._fdb_lines(specs))
        guests = []
        for spec in specs:
            dirs = GuestDirs.under(run.rw / spec.name)
            for d in (dirs.upper, dirs.work, dirs.root):
                d.mkdir(parents=True)
            write_guest_files(spec, ctx.client_public_key, dirs.upper)
            dirs.fstab.write_text(fstab_text(dirs, run.base))
            self._record("cgroup", paths=[str(p) for p in run.cgroups.paths(spec.name)])
            run.cgroups.create(spec.name, spec.memory, spec.cpus)
            t_created_end = now_ns()
            ctx.on_phase(spec.name, "created", t_created, t_created_end)
            self._start(spec, dirs, logs / f"{spec.name}.log")
            t_started = now_ns()
            ctx.on_phase(spec.name, "started", t_created_end, t_started)
            t_created = t_started
            guests.append(Guest(spec, spec.address, 22, info={"upper": str(dirs.upper)}))
            ctx.on_started(guests[-1])
        self.guests = guests
        return guests

    def _start(self, spec: GuestSpec, dirs: GuestDirs, log_path: Path) -> None:
        """Start the guest's PID 1 in its namespaces (journalled as a process)."""
        run = self.run
        procs = [p / "cgroup.procs" for p in run.cgroups.paths(spec.name)]
        script = init_script(spec, dirs, procs, run.services, run.bridge_mac)
        log = open(log_path, "wb")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                [
                    "nsenter", f"--net=/run/netns/{run.netns_name(spec)}",
                    f"--mount={run.mount_template}", "--",
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

    def down(self) -> list[str]:
        problems = teardown(reversed(self._resources))
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self._procs.clear()
        self._resources.clear()
        return problems

    def dead(self, guest: Guest) -> str | None:
        proc = self._procs.get(guest.name)
        if proc is None or proc.poll() is None:
            return None
        return f"the guest's init exited with status {proc.returncode} (see its log)"

    # -- measurements ----------------------------------------------------------------------

    def footprint(self, guests: Sequence[Guest]) -> Footprint:
        """Per guest: memory charged to its cgroup and the blocks its upper layer uses."""
        uppers = {str(g.info["upper"]): g.name for g in guests if g.info.get("upper")}
        used: dict[str, int] = {}
        if uppers:
            # One du for every guest: allocated blocks, what the copy-on-write layer costs.
            for line in host.run(["du", "-sk", *uppers]).stdout.splitlines():
                kib, _, path = line.partition("\t")
                if path in uppers:
                    used[uppers[path]] = int(kib) * 1024
        result: Footprint = {}
        for g in guests:
            values: dict[str, tuple[float, str]] = {}
            if g.name in used:
                values["upper_bytes"] = (float(used[g.name]), "B")
            mem = self.run.cgroups.memory_bytes(g.name)
            if mem is not None:
                values["memory_bytes"] = (float(mem), "B")
            result[g.name] = values
        return result

    def sample(self, guests: Sequence[Guest], *, slow: bool = False) -> list[Sample]:
        """Each guest's cgroup (CPU, memory, processes) and the host end of its veth, whose
        receive side is what the guest sent."""
        run, out = self.run, []
        cgroups, links = run.cgroups, read_net_dev()
        for g in guests:
            name = g.name
            cpu, mem, procs = (cgroups.cpu_seconds(name), cgroups.memory_bytes(name),
                               cgroups.processes(name))
            if cpu is not None:
                out.append(Sample(name, "cpu_seconds", cpu, "s", "counter"))
            if mem is not None:
                out.append(Sample(name, "memory_bytes", float(mem), "B"))
            if procs is not None:
                out.append(Sample(name, "processes", float(procs), ""))
            out += link_samples(name, run.veth_name(g.spec), links)
        if slow:
            for name, values in self.footprint(guests).items():
                if "upper_bytes" in values:
                    out.append(Sample(name, "upper_bytes", values["upper_bytes"][0], "B"))
        return out

    # -- faults ----------------------------------------------------------------------------

    def kill(self, guest: Guest) -> None:
        for p in self.run.cgroups.paths(guest.name):
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
        self.run.cgroups.freeze(guest.name, True)

    def resume(self, guest: Guest) -> None:
        self.run.cgroups.freeze(guest.name, False)

    def isolate(self, guests: Sequence[Guest]) -> None:
        """Cut ``guests`` off the lab bridge (from the host and every other guest)."""
        host.ip_batch([f"link set {self.run.veth_name(g.spec)} down" for g in guests])
        self._isolated.update(g.name for g in guests)

    def partition(self, side_a: Sequence[Guest], side_b: Sequence[Guest]) -> None:
        """Drop bridged traffic between two groups with nftables (bridge family)."""
        run = self.run
        ruleset = nft.partition_ruleset(
            run.nft_table, [run.veth_name(g.spec) for g in side_a],
            [run.veth_name(g.spec) for g in side_b])
        if not self._partitioned:
            self._record("nft", family="bridge", table=run.nft_table)
        nft.apply(ruleset)
        self._partitioned = True

    def heal(self) -> None:
        by_name = {g.name: g for g in self.guests}
        host.ip_batch([f"link set {self.run.veth_name(by_name[n].spec)} up"
                       for n in sorted(self._isolated)])
        self._isolated.clear()
        if self._partitioned:
            nft.delete_table("bridge", self.run.nft_table)
            self._partitioned = False

    def limit_bandwidth(self, guest: Guest, rate: str) -> None:
        # tbf on both ends: host→guest on the host-side veth, guest→host inside the guest.
        tc.limit_rate(self.run.veth_name(guest.spec), rate)
        tc.limit_rate("eth0", rate, netns=self.run.netns_name(guest.spec))

    def unlimit_bandwidth(self, guest: Guest) -> None:
        tc.clear(self.run.veth_name(guest.spec))
        tc.clear("eth0", netns=self.run.netns_name(guest.spec))

    def shape(self, guest: Guest, rules: Sequence[Shaping], shell: GuestShell) -> None:
        run, table = self.run, degrade.table_name(self.run.tag, guest.spec.index)
        degrade.shape(run.netns_name(guest.spec), run.veth_name(guest.spec), table, rules,
                      {g.spec.address: run.veth_name(g.spec) for g in self.guests},
                      lambda: self._record("nft", family="netdev", table=table))

    # -- a kept lab, from the CLI ------------------------------------------------------------

    @classmethod
    def attach(cls, state: RunState, lab_dir: Path, inventory: Mapping[str, Any]) -> NetnsBackend:
        """A handle on a lab left up, from its journal and ``guests.json``: every link of it
        may be down (heal brings them up), a partition table may be loaded."""
        import ipaddress

        from harness.identity import make_specs

        backend = cls(dict(inventory.get("backend_options", {})))
        ctx = RunContext(state.run_id, state, lab_dir, "")
        backend._run = NetnsRun.of(ctx, backend.opts)
        backend._partitioned = any(r.kind == "nft" for r in state.resources)
        subnet = ipaddress.IPv4Network(str(inventory["subnet"]))
        specs = make_specs(state.run_id, len(inventory["guests"]), subnet,
                           prefix=str(inventory.get("name_prefix", "g")))
        # Addresses and MACs as listed: a cluster shard's come from its cluster's run.
        listed = {str(g["name"]): g for g in inventory["guests"]}
        specs = [_as_listed(s, listed.get(s.name, {})) for s in specs]
        backend.guests = [Guest(s, s.address) for s in specs]
        backend._isolated = {g.name for g in backend.guests}
        return backend


def _as_listed(spec: GuestSpec, listed: Mapping[str, Any]) -> GuestSpec:
    """``spec`` with the MAC and address ``guests.json`` lists for it."""
    import ipaddress

    ip = ipaddress.IPv4Interface(f"{listed.get('ip', spec.address)}/{spec.ip.network.prefixlen}")
    return dataclasses.replace(spec, mac=str(listed.get("mac", spec.mac)), ip=ip)
