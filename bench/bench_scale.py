"""Scale: N guests up, a command on each, down, nothing left — and where the CPU goes.

For each N (default 64, 256, 1024, 4096), one netns lab: the seconds until every guest has
answered authenticated SSH with its pinned key and a first command (``Session.lab_up``),
then ROUNDS rounds of ``true`` on every guest (``Fleet.run``), then the seconds to take it
down. The host's CPU over the bring-up (``/proc/stat``, every process on this machine) is
split into the harness's own (its ``getrusage``) and the rest (the guests, their sshd and
executors, the kernel's work for them, and whatever else runs on a shared host), per guest.
After the lab is down, the leak check: no namespace, mount, cgroup or process of the run
left.

``--profile``: at the smallest N, a profile of the client's CPU per command over the fan-out
rounds, every thread included (yappi; paramiko reads each connection in its own thread, so a
one-thread profiler misses most of it).

    python bench/bench_scale.py [--guests 64,256,1024,4096] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import fmt, header, loadavg, log, md_table, missing_modules, trap_signals

from harness.config import build_config
from harness.identity import run_tag
from harness.preflight import preflight_lab
from harness.session import Session
from harness.ssh import FanOut

PROJECT = Path(__file__).resolve().parent.parent
#: The goals of issue 21 for 4096 guests.
GOAL_UP_S = 300.0
GOAL_GROWTH = 1.5
#: Functions shown in the client profile.
PROFILE_TOP = 12


def busy_cpu_seconds() -> float:
    """CPU seconds every CPU of this machine has spent not idle since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def softirq_seconds() -> float:
    """CPU seconds every CPU has spent in softirq since boot (the bridge's flooding shows
    here: frames are copied to ports in the receiving softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Row:
    n: int
    ready: int
    up_s: float
    harness_ms: float  # per guest, over the bring-up
    rest_ms: float
    softirq_ms: float  # per guest, over the bring-up (part of rest)
    round_s: float  # median of the fan-out rounds
    down_s: float
    leaks: list[str]
    load: str

    @property
    def per_guest_ms(self) -> float:
        return 1000 * self.up_s / self.n


def leftovers(run_id: str) -> list[str]:
    """What the run left on this host: namespaces, mounts, cgroups, processes."""
    out = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if n := sum(line.startswith(f"sl-{run_tag(run_id)}-") for line in netns.splitlines()):
        out.append(f"{n} namespaces")
    if n := sum(run_id in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
        out.append(f"{n} mounts")
    cg = [p for p in Path("/sys/fs/cgroup").glob(f"*/scalelab/{run_id}")]
    if cg:
        out.append(f"{len(cg)} cgroup directories")
    procs = subprocess.run(["pgrep", "-f", run_id], capture_output=True, text=True).stdout.split()
    if procs:
        out.append(f"{len(procs)} processes")
    return out


def one_size(n: int, rounds: int, reports: Path, profile: bool) -> tuple[Row, str]:
    cfg = build_config({"guests": str(n), "reports_dir": str(reports)}, PROJECT)
    image = preflight_lab(cfg, n)
    load = loadavg()
    busy0, own0, t0 = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
    soft0 = softirq_seconds()
    s = Session(cfg, image=image)
    prof = ""
    try:
        # Every guest is waited for; the ones that did not answer are counted, not fatal.
        lab = s.lab_up(n, min_ready=0.0)
        up = time.monotonic() - t0
        busy, own = busy_cpu_seconds() - busy0, own_cpu_seconds() - own0
        soft = softirq_seconds() - soft0
        log(f"N={n}: up in {up:.1f} s (load {loadavg()})")
        fleet = lab.require_fleet()
        ready = len(fleet.names)
        if ready < n:
            log(f"N={n}: {n - ready} did not come up: {list(lab.failures.values())[:3]}")
        times = []
        for i in range(rounds):
            if profile and i == 0:
                prof = profile_rounds(fleet, n, rounds)
            r0 = time.monotonic()
            res = fleet.run("true")
            times.append(time.monotonic() - r0)
            if not res.ok or len(res.results) != ready:
                bad = sorted(res.errors) or sorted(set(res.results) - set(res.succeeded))
                raise SystemExit(f"N={n}: `true` failed on {len(bad)} guest(s), e.g. "
                                 f"{bad[:1]}: {list(res.errors.values())[:1]}")
        d0 = time.monotonic()
        problems = lab.stop()
        down = time.monotonic() - d0
        if problems:
            log(f"N={n}: problems taking the lab down: {problems[:3]}")
    finally:
        s.finish(render=False)
    times.sort()
    row = Row(n, ready, up, 1000 * own / n, 1000 * (busy - own) / n, 1000 * soft / n,
              times[len(times) // 2], down, leftovers(s.run_id), load)
    log(f"N={n}: round {row.round_s:.2f} s, down {down:.1f} s, left: {row.leaks or 'nothing'}")
    return row, prof


def profile_rounds(fleet: FanOut, n: int, rounds: int) -> str:
    """The client's CPU per command over ``rounds`` fan-outs, by function, all threads."""
    if missing_modules(["yappi"]):
        return "(profile not run: `.venv/bin/pip install yappi`)"
    import yappi

    run = fleet.run
    c0 = own_cpu_seconds()
    for _ in range(rounds):
        run("true")
    plain = (own_cpu_seconds() - c0) / (n * rounds)
    yappi.set_clock_type("cpu")
    yappi.start(builtins=True)
    for _ in range(rounds):
        run("true")
    yappi.stop()
    stats = yappi.get_func_stats()
    commands = n * rounds
    total = sum(s.tsub for s in stats)
    stats.sort("tsub")
    rows = []
    for st in list(stats)[:PROFILE_TOP]:
        where = f"{Path(st.module).name}:{st.lineno}" if st.lineno else Path(st.module).name
        rows.append((f"`{st.name}` ({where})", f"{1e6 * st.tsub / commands:.1f}",
                     f"{100 * st.tsub / total:.0f} %"))
    parts: dict[str, float] = {}
    for st in stats:
        parts[component(st.module, st.name)] = parts.get(component(st.module, st.name), 0) + st.tsub
    yappi.clear_stats()
    head = (f"Client CPU per command, {rounds} rounds of `true` on {n} guests: "
            f"{1e6 * plain:.0f} µs unprofiled; under the profiler (which adds its own cost) "
            f"{1e6 * total / commands:.0f} µs, all threads, own time:\n\n")
    by_part = md_table(["part", "µs per command", "share"],
                       [(k, f"{1e6 * v / commands:.1f}", f"{100 * v / total:.0f} %")
                        for k, v in sorted(parts.items(), key=lambda kv: -kv[1])])
    return (head + by_part + "\nThe functions with the most own time:\n\n"
            + md_table(["function", "µs per command", "share"], rows))


def component(module: str, name: str) -> str:
    """Which part of the client a profiled function belongs to."""
    if "paramiko" in module:
        return "paramiko (SSH packets, channels, its reader threads)"
    if "/harness/" in module:
        return "scalelab (fan-out, executor framing, results)"
    if "cryptography" in module:
        return "cryptography (AES-GCM)"
    if "socket" in name or "epoll" in name or name in ("write", "read"):
        return "system calls (socket, epoll, pipes)"
    if "lock" in name or "threading" in module:
        return "threads and locks"
    return "other Python (stdlib, builtins)"


def report(rows: list[Row], rounds: int) -> str:
    base = rows[0]
    table = md_table(
        ["N", "ready", "up s", "ms per guest", "× N=" + str(base.n), "harness CPU ms/guest",
         "rest CPU ms/guest", "of it softirq", f"`true` on all (median of {rounds}) s", "down s",
         "left behind", "load at start"],
        [(r.n, r.ready, fmt(r.up_s, 1), fmt(r.per_guest_ms, 1),
          fmt(r.per_guest_ms / base.per_guest_ms),
          fmt(r.harness_ms, 1), fmt(r.rest_ms, 1), fmt(r.softirq_ms, 1), fmt(r.round_s),
          fmt(r.down_s, 1),
          ", ".join(r.leaks) or "nothing", r.load) for r in rows])
    goals = []
    big = [r for r in rows if r.n >= 4096]
    for r in big:
        ok = r.up_s < GOAL_UP_S and r.ready == r.n
        goals.append(f"- {r.n} guests to authenticated SSH in under {GOAL_UP_S:.0f} s: "
                     f"**{'met' if ok else 'NOT met'}** ({r.up_s:.0f} s, {r.ready} of {r.n} ready)")
        growth = r.per_guest_ms / base.per_guest_ms
        goals.append(f"- per-guest bring-up at {r.n} within {GOAL_GROWTH}× of that at "
                     f"{base.n}: **{'met' if growth <= GOAL_GROWTH else 'NOT met'}** "
                     f"({growth:.2f}×: {r.per_guest_ms:.1f} vs {base.per_guest_ms:.1f} ms)")
    return table + ("\n" + "\n".join(goals) + "\n" if goals else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--guests", default="64,256,1024,4096")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.guests.split(","))
    trap_signals()  # SIGTERM/SIGHUP unwind like Ctrl-C: the lab is taken down
    print(header("Scale: up, `true` on every guest, down (netns)", 1,
                 "harness CPU: the harness process's own; rest: every other process and "
                 "the kernel over the bring-up, per guest"))
    rows: list[Row] = []
    prof = ""
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-") as tmp:
        for i, n in enumerate(sizes):
            row, p = one_size(n, args.rounds, Path(tmp), args.profile and i == 0)
            rows.append(row)
            prof = prof or p
    print(report(rows, args.rounds))
    if prof:
        print(prof)
    return 1 if any(r.leaks for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
