"""Fan-out against peers: K rounds of ``true`` on 64 scalelab guests, tool by tool.

The guests are brought up once (a ``Session`` and ``lab_up``). Each repetition then, for
every tool in turn (the order rotates): opens the tool's own connections to every guest
(timed as *set-up*), runs one untimed warm-up round, then K timed rounds, each running
``true`` once on every guest and waiting for all of them. Reported: set-up seconds,
commands per second over the K rounds, and p50/p99 of the per-command latency, measured the
same way for every tool: from the start of the round to the moment that guest's exit status
is known to the tool.

Tools: scalelab's ``Fleet.run`` (its own connect + readiness path, then each command one
frame on the guest's persistent executor session), the same connections with an exec
channel per command (scalelab before the sessions), parallel-ssh's ``ParallelSSHClient``,
Fabric's ``ThreadingGroup``, asyncssh, and
OpenSSH with ControlMaster/ControlPersist masters driven by ``xargs -P``. For scalelab's
tools also *idle p50*: one ``Fleet.run("true")`` on one guest, call to return, 300 times in
a row while the other guests are idle. Host keys are
checked against the run's ``known_hosts`` wherever the tool can; see the table's column.

    python bench/bench_fanout.py [--guests 64] [--rounds 20] [--repeat 3] [--tools ...]
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from benchlib import (
    PROJECT,
    fmt,
    header,
    log,
    md_table,
    median,
    missing_commands,
    missing_modules,
    own_cpu_seconds,
    trap_signals,
    tree_cpu_seconds,
)

from harness.backends.base import Guest
from harness.config import build_config
from harness.lab import Lab
from harness.preflight import preflight_lab
from harness.session import Session
from harness.ssh import (
    Fleet,
    HandshakeGate,
    ReadyOptions,
    connect_ready,
    host_keys_for,
    load_private_key,
    no_executor,
    run_on,
)


@dataclass
class LabView:
    """What a tool is given: guests (name → IP) and the run's exported SSH files."""

    guests: dict[str, str]
    known_hosts: Path
    ssh_config: Path
    key: Path
    lab: Lab

    @property
    def guest_roots(self) -> list[int]:
        """The host pids of the guests' process trees (for their CPU time)."""
        return [p.pid for p in getattr(self.lab.backend, "_procs", {}).values()]


class Tool(abc.ABC):
    """One fan-out tool. ``setup`` opens connections; ``round`` runs ``true`` everywhere."""

    name: ClassVar[str]
    host_keys: ClassVar[str]
    modules: ClassVar[tuple[str, ...]] = ()
    commands: ClassVar[tuple[str, ...]] = ()

    def __init__(self, view: LabView) -> None:
        self.view = view

    @abc.abstractmethod
    def setup(self) -> None: ...

    @abc.abstractmethod
    def round(self) -> list[float]:
        """Run ``true`` on every guest; seconds from round start to each guest's result."""

    @abc.abstractmethod
    def close(self) -> None: ...


def _check_exit(statuses: Sequence[int | None], tool: str) -> None:
    bad = [s for s in statuses if s != 0]
    if bad:
        raise RuntimeError(f"{tool}: {len(bad)} commands did not exit 0 ({bad[:3]})")


class ScalelabTool(Tool):
    """Fresh connections the way ``Lab`` makes them, then ``Fleet.run``."""

    name = "scalelab Fleet.run"
    host_keys = "pinned, RejectPolicy"

    def setup(self) -> None:
        lab = self.view.lab
        guests: list[Guest] = list(lab.guests)
        key = load_private_key(self.view.key.read_text())
        host_keys, gate = host_keys_for(guests), HandshakeGate(lab.config.ssh_concurrency)
        opts = ReadyOptions(timeout=60)
        with ThreadPoolExecutor(min(len(guests), 256)) as pool:
            clients = dict(zip([g.name for g in guests], pool.map(
                lambda g: connect_ready(g, key, host_keys, gate, lambda *a: None, opts),
                guests), strict=True))
        self.fleet = Fleet(clients, {g.name: g for g in guests}, lab.config.fanout_workers)

        without = {n: why for n, c in clients.items() if (why := no_executor(c))}
        if without:  # the benchmark is of the sessions: say so rather than measure the rest
            raise RuntimeError(f"scalelab: no executor on {len(without)} guests: "
                               f"{next(iter(without.values()))}")

    def round(self) -> list[float]:
        t0 = time.time_ns()
        group = self.fleet.run("true")
        if not group.ok:
            raise RuntimeError(f"scalelab: failed on {group.failed}")
        # The command's end as the guest measured it: a netns guest's clock is the host's.
        return [(r.end_ns - t0) / 1e9 for r in group.results.values()]

    def idle_latency(self, n: int = 300) -> list[float]:
        """Seconds of ``Fleet.run("true")`` on one guest while the others are idle."""
        one = self.fleet.names[:1]
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            if not self.fleet.run("true", names=one).ok:
                raise RuntimeError("scalelab: true failed on an idle guest")
            out.append(time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self.fleet.close()


class ScalelabExecTool(ScalelabTool):
    """scalelab before persistent sessions: one exec channel (and sshd session and shell)
    per command, over the same connections."""

    name = "scalelab, exec channel per command"

    def round(self) -> list[float]:
        t0 = time.perf_counter()
        ends: list[float] = []

        def one(name: str, client: Any) -> int:
            res = run_on(client, "true", timeout=60, guest=name)
            ends.append(time.perf_counter())
            return res.exit_status

        group = self.fleet.map(one)
        _check_exit([*group.results.values()], self.name)
        return [e - t0 for e in ends]

    def idle_latency(self, n: int = 300) -> list[float]:
        name = self.fleet.names[0]
        client = self.fleet.clients[name]
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            if run_on(client, "true", timeout=60, guest=name).exit_status != 0:
                raise RuntimeError("scalelab exec: true failed on an idle guest")
            out.append(time.perf_counter() - t0)
        return out


class PsshTool(Tool):
    """parallel-ssh's native (libssh2) ParallelSSHClient."""

    name = "parallel-ssh ParallelSSHClient"
    host_keys = ("none in the tool (ssh2 client has no known_hosts check); the benchmark "
                 "compares each session's host key with known_hosts after connecting, "
                 "inside set-up")
    modules = ("pssh", "gevent")

    def setup(self) -> None:
        import gevent
        from pssh.clients import ParallelSSHClient

        hosts = list(self.view.guests.values())
        self.client = ParallelSSHClient(
            hosts, user="root", pkey=str(self.view.key), pool_size=len(hosts),
            num_retries=1, allow_agent=False, identity_auth=False, timeout=30)
        greenlets = self.client.connect_auth()
        gevent.joinall(greenlets, raise_error=True)
        self._verify([g.get() for g in greenlets])

    def _verify(self, host_clients: list[Any]) -> None:
        pinned = {}
        for line in self.view.known_hosts.read_text().splitlines():
            names, _, blob = line.split()[:3]
            for n in names.split(","):
                pinned[n] = blob
        for hc in host_clients:
            key, _ = hc.session.hostkey()
            if pinned.get(hc.host) != base64.b64encode(key).decode():
                raise RuntimeError(f"parallel-ssh: host key of {hc.host} does not match")

    def round(self) -> list[float]:
        import gevent

        t0 = time.perf_counter()
        output = self.client.run_command("true")

        def finished(ho: Any) -> tuple[float, int | None]:
            ho.client.wait_finished(ho)
            return time.perf_counter() - t0, ho.exit_code

        done = gevent.joinall([gevent.spawn(finished, ho) for ho in output], raise_error=True)
        results = [g.get() for g in done]
        _check_exit([r[1] for r in results], self.name)
        return [r[0] for r in results]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for hc in getattr(self.client, "_host_clients", {}).values():
                hc.disconnect()


class FabricTool(Tool):
    """Fabric's ThreadingGroup (paramiko, a thread per host per call)."""

    name = "Fabric ThreadingGroup"
    host_keys = "known_hosts + RejectPolicy (set by the benchmark; Fabric's default auto-adds)"
    modules = ("fabric",)

    def setup(self) -> None:
        import paramiko
        from fabric import Connection, ThreadingGroup

        ends: dict[str, float] = {}
        self.ends = ends

        class TimedConnection(Connection):  # type: ignore[misc]
            def run(self, *args: Any, **kwargs: Any) -> Any:
                result = super().run(*args, **kwargs)
                ends[self.host] = time.perf_counter()
                return result

        conns = []
        for ip in self.view.guests.values():
            c = TimedConnection(ip, user="root", connect_kwargs={
                "key_filename": str(self.view.key), "look_for_keys": False,
                "allow_agent": False})
            c.client.load_host_keys(str(self.view.known_hosts))
            c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            conns.append(c)
        gate = HandshakeGate(self.view.lab.config.ssh_concurrency)

        def open_one(c: Any) -> None:
            with gate.slot():
                c.open()

        with ThreadPoolExecutor(len(conns)) as pool:
            list(pool.map(open_one, conns))
        self.group = ThreadingGroup.from_connections(conns)

    def round(self) -> list[float]:
        self.ends.clear()
        t0 = time.perf_counter()
        result = self.group.run("true", hide=True, warn=True)
        if result.failed:
            raise RuntimeError(f"Fabric: failed on {len(result.failed)} hosts")
        _check_exit([r.exited for r in result.values()], self.name)
        return [e - t0 for e in self.ends.values()]

    def close(self) -> None:
        self.group.close()


class AsyncsshTool(Tool):
    """asyncssh: one event loop, one connection per guest, ``conn.run`` gathered."""

    name = "asyncssh"
    host_keys = "known_hosts (the run's file)"
    modules = ("asyncssh",)

    def setup(self) -> None:
        import asyncssh

        self.loop = asyncio.new_event_loop()
        sem_limit = self.view.lab.config.ssh_concurrency

        async def connect_all() -> list[Any]:
            sem = asyncio.Semaphore(sem_limit)

            async def one(ip: str) -> Any:
                async with sem:
                    return await asyncssh.connect(
                        ip, username="root", client_keys=[str(self.view.key)],
                        known_hosts=str(self.view.known_hosts), agent_path=None,
                        config=None)

            return list(await asyncio.gather(*(one(ip) for ip in self.view.guests.values())))

        self.conns = self.loop.run_until_complete(connect_all())

    def round(self) -> list[float]:
        async def all_true() -> list[tuple[float, int | None]]:
            t0 = time.perf_counter()

            async def one(conn: Any) -> tuple[float, int | None]:
                res = await conn.run("true", check=False)
                return time.perf_counter() - t0, res.exit_status

            return list(await asyncio.gather(*(one(c) for c in self.conns)))

        results = self.loop.run_until_complete(all_true())
        _check_exit([r[1] for r in results], self.name)
        return [r[0] for r in results]

    def close(self) -> None:
        async def close_all() -> None:
            for c in self.conns:
                c.close()
            await asyncio.gather(*(c.wait_closed() for c in self.conns),
                                 return_exceptions=True)

        with contextlib.suppress(Exception):
            self.loop.run_until_complete(close_all())
        self.loop.close()


class OpensshTool(Tool):
    """OpenSSH ``ssh`` through ControlMaster/ControlPersist masters, ``xargs -P`` per round.

    Commands/s come from plain ``xargs -P N ssh … true`` rounds; latencies from separate
    rounds where each ``ssh`` is wrapped in ``bash -c`` printing ``$EPOCHREALTIME`` at its
    end (the wrapper's fork would otherwise be charged to the throughput).
    """

    name = "OpenSSH ControlMaster + xargs -P"
    host_keys = "StrictHostKeyChecking yes, the run's known_hosts (its ssh_config)"
    commands = ("ssh", "xargs", "bash")

    def setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="slb-cm-", dir="/tmp"))
        self.ssh = ["ssh", "-F", str(self.view.ssh_config), "-o",
                    f"ControlPath={self.dir}/%C", "-o", "BatchMode=yes"]
        self.names = "\n".join(self.view.guests) + "\n"
        argv = ["xargs", "-P", str(self.view.lab.config.ssh_concurrency), "-I{}",
                *self.ssh, "-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-fN", "{}"]
        subprocess.run(argv, input=self.names, text=True, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.latency_rounds: list[list[float]] = []

    def _xargs(self, inner: list[str]) -> str:
        argv = ["xargs", "-P", str(len(self.view.guests)), "-I{}", *inner]
        out = subprocess.run(argv, input=self.names, text=True, capture_output=True,
                             check=False)
        if out.returncode != 0:
            raise RuntimeError(f"OpenSSH: xargs exited {out.returncode}: {out.stderr[-300:]}")
        return out.stdout

    def round(self) -> list[float]:
        self._xargs([*self.ssh, "-o", "ControlMaster=no", "{}", "true"])
        return []  # latencies come from latency_round

    def latency_round(self) -> list[float]:
        t0 = time.time()
        cmd = " ".join([*self.ssh, "-o", "ControlMaster=no", '"$1"', "true"])
        out = self._xargs(["bash", "-c", f'{cmd} && echo "$EPOCHREALTIME"', "_", "{}"])
        return [float(x) - t0 for x in out.split()]

    def close(self) -> None:
        if not hasattr(self, "names"):
            shutil.rmtree(getattr(self, "dir", "/nonexistent"), ignore_errors=True)
            return
        subprocess.run(["xargs", "-P", "16", "-I{}", *self.ssh, "-O", "exit", "{}"],
                       input=self.names, text=True, capture_output=True, check=False)
        self._kill_leftover_masters()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftover_masters(self) -> None:
        """Masters still alive after ``-O exit``: only ours (their command line names our
        private ControlPath directory), killed by pid."""
        needle = str(self.dir).encode()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    if needle in (d / "cmdline").read_bytes():
                        os.kill(int(d.name), signal.SIGKILL)


TOOLS: dict[str, type[Tool]] = {
    "scalelab": ScalelabTool, "scalelab-exec": ScalelabExecTool, "pssh": PsshTool,
    "fabric": FabricTool, "asyncssh": AsyncsshTool, "openssh": OpensshTool,
}


@dataclass
class Stats:
    """Repetitions of one tool: set-up seconds, commands/s, and all latencies (s)."""

    setup: list[float] = field(default_factory=list)
    cps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    #: p50 of one ``true`` on one guest while the others are idle (scalelab's tools)
    idle_p50: list[float] = field(default_factory=list)
    guest_cpu: list[float] = field(default_factory=list)
    #: commands/s by repetition, to pair each with scalelab's of the same repetition
    by_rep: dict[int, float] = field(default_factory=dict)
    error: str | None = None


def paired_ratio(ours: Stats, theirs: Stats) -> float | None:
    """Median over the repetitions both completed of scalelab's commands/s ÷ the tool's.

    The tools of one repetition run within a minute or two of each other; the load of this
    shared host drifts by several times over a whole run, which a ratio of two medians
    taken at different moments would mix in.
    """
    reps = sorted(set(ours.by_rep) & set(theirs.by_rep))
    if not reps:
        return None
    return median([ours.by_rep[r] / theirs.by_rep[r] for r in reps])


def measure(tool: Tool, rounds: int, stats: Stats) -> None:
    """Set-up, warm-up, K timed rounds (and OpenSSH's latency rounds) of one tool."""
    t0 = time.monotonic()
    try:
        tool.setup()
        stats.setup.append(time.monotonic() - t0)
        tool.round()  # warm-up: first channel, lazy imports
        lat: list[float] = []
        guests = tool.view.guest_roots
        g1, c1, t1 = tree_cpu_seconds(guests), own_cpu_seconds(), time.monotonic()
        for _ in range(rounds):
            lat += tool.round()
        loop = time.monotonic() - t1
        commands = len(tool.view.guests) * rounds
        stats.client_cpu.append((own_cpu_seconds() - c1) / commands)
        stats.guest_cpu.append((tree_cpu_seconds(guests) - g1) / commands)
        if isinstance(tool, OpensshTool):
            for _ in range(rounds):
                lat += tool.latency_round()
        if isinstance(tool, ScalelabTool):
            stats.idle_p50.append(float(np.percentile(tool.idle_latency(), 50)))
        stats.cps.append(commands / loop)
        stats.p50.append(float(np.percentile(lat, 50)))
        stats.p99.append(float(np.percentile(lat, 99)))
    finally:
        try:
            tool.close()
        except Exception as exc:  # a half-made set-up; say so, keep going
            log(f"{tool.name}: close: {type(exc).__name__}: {exc}")


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The tools whose modules and commands exist here, and why the others cannot run."""
    ok, why = [], {}
    for name in names:
        cls = TOOLS[name]
        missing = missing_modules(cls.modules) + missing_commands(cls.commands)
        if missing:
            why[name] = f"missing: {', '.join(missing)} (pip/apt install, see bench/README.md)"
        else:
            ok.append(name)
    return ok, why


def run_tools(view: LabView, names: list[str], rounds: int, repeat: int) -> dict[str, Stats]:
    results = {n: Stats() for n in names}
    for rep in range(repeat):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            stats = results[name]
            try:
                measure(TOOLS[name](view), rounds, stats)
                stats.by_rep[rep] = stats.cps[-1]
            except Exception as exc:
                stats.error = f"{type(exc).__name__}: {exc}"
                log(f"{name}: FAILED {stats.error}")
                continue
            log(f"rep {rep + 1}/{repeat} {name}: set-up {stats.setup[-1]:.2f} s, "
                f"{stats.cps[-1]:.0f} cmd/s")
    return results


def table(results: dict[str, Stats]) -> str:
    ours = results.get("scalelab")
    rows = []
    for name, s in results.items():
        cps = median(s.cps)
        ratio = paired_ratio(ours, s) if ours else None
        rows.append((TOOLS[name].name, fmt(median(s.setup)), fmt(cps, 0),
                     fmt(1 / ratio if ratio else None, 2, "×"),
                     fmt(median(s.p50) * 1e3, 1), fmt(median(s.p99) * 1e3, 1),
                     fmt(median(s.idle_p50) * 1e3 if s.idle_p50 else None, 2),
                     fmt(median(s.client_cpu) * 1e3), fmt(median(s.guest_cpu) * 1e3),
                     len(s.cps), TOOLS[name].host_keys, s.error or ""))
    return md_table(["tool", "set-up s", "commands/s", "÷ scalelab (cmd/s, paired)", "p50 ms",
                     "p99 ms", "idle p50 ms", "client CPU ms/cmd", "guest CPU ms/cmd", "runs",
                     "host keys", "error"], rows, "lrrrrrrrrrll")


def goals(results: dict[str, Stats]) -> str:
    base = results.get("scalelab")
    lines = ["Goals (ratios: medians of the repetitions' paired ratios):", ""]
    for tool, need, label in (("asyncssh", 3.0, "at least 3× asyncssh"),
                              ("scalelab-exec", 1.0, "faster than an exec channel per command"),
                              ("pssh", 1.0, "at least on par with parallel-ssh"),
                              ("fabric", 2.0, "at least 2× Fabric's ThreadingGroup")):
        s = results.get(tool)
        r = paired_ratio(base, s) if base and s else None
        if base and s and r is not None:
            per_rep = ", ".join(f"{base.by_rep[k] / s.by_rep[k]:.2f}"
                                for k in sorted(set(base.by_rep) & set(s.by_rep)))
            lines.append(f"- {label}: **{'met' if r >= need else 'NOT met'}** "
                         f"(scalelab does {r:.2f}× its commands/s; by repetition: {per_rep})")
    if base and base.idle_p50:
        p50 = median(base.idle_p50) * 1e3
        lines.append(f"- p50 of one `true` on an idle guest under 2 ms: "
                     f"**{'met' if p50 < 2 else 'NOT met'}** ({p50:.2f} ms; by repetition: "
                     + ", ".join(f"{x * 1e3:.2f}" for x in base.idle_p50) + ")")
    # Context for the ratios above: the guests run on the same CPUs as the tools, so
    # commands/s is bounded by client + guest CPU per command; the client's own share
    # is what a tool controls.
    if base and base.client_cpu:
        ours = median(base.client_cpu)
        for tool, s in results.items():
            if tool != "scalelab" and s.client_cpu:
                lines.append(f"- client CPU per command, {TOOLS[tool].name}: "
                             f"{median(s.client_cpu) / ours:.2f}× scalelab's "
                             f"(guest CPU per command: {median(s.guest_cpu) * 1e3:.2f} ms "
                             f"vs {median(base.guest_cpu) * 1e3:.2f} ms)")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--guests", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=20, help="K: commands per guest")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"of {', '.join(TOOLS)}")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trap_signals()
    names, why = available(["scalelab"] + [t for t in args.tools.split(",")
                                           if t and t != "scalelab"])
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-") as tmp:
        cfg = build_config({"guests": str(args.guests), "reports_dir": tmp}, PROJECT)
        session = Session(cfg, image=preflight_lab(cfg, args.guests))
        try:
            lab = session.lab_up(args.guests)
            assert lab.state is not None
            view = LabView({g.name: g.host for g in lab.guests}, lab.run_dir / "known_hosts",
                           lab.run_dir / "ssh_config", lab.state.dir / "id_ed25519", lab)
            head = header(f"Fan-out: {args.rounds} × `true` on each of {args.guests} scalelab "
                          "guests", args.repeat,
                          f"scalelab ssh_concurrency {cfg.ssh_concurrency}, fanout_workers "
                          f"{cfg.fanout_workers}")
            results = run_tools(view, names, args.rounds, args.repeat)
        finally:
            session.finish(render=False)
    out = [head, table(results), goals(results)]
    if why:
        out.append("Not run: " + "; ".join(f"{k}: {v}" for k, v in why.items()) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
