"""Run every benchmark and write ``bench/RESULTS.md`` (what ``make bench`` does).

    .venv/bin/python bench/run_all.py [--quick] [--only NAME,...] [--out bench/RESULTS.md]

Checks first what the peer benchmarks need (Python packages in this venv, Debian commands)
and says plainly what is missing; a missing peer is reported as "not run" in its table
instead of failing the run. Each benchmark prints Markdown on stdout (kept for RESULTS.md)
and progress on stderr (shown as it runs). ``--quick`` is a short run: fewer sizes and
repetitions.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import HERE, loadavg, log, missing_commands, missing_modules, trap_signals

PY_PACKAGES = {"pssh": "parallel-ssh", "fabric": "fabric", "asyncssh": "asyncssh",
               "yappi": "yappi"}  # yappi: the client profile of bench_scale.py
STDERR_TAIL = 15
DEBIAN = {"systemd-nspawn": "systemd-container", "lxc-copy": "lxc", "podman": "podman",
          "runc": "runc"}


@dataclass(frozen=True)
class Bench:
    """One benchmark script, its heading (if its output has none) and its arguments for a
    full and a quick run."""

    name: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    title: str = ""


BENCHES = (
    Bench("bringup", "bench_bringup.py", ("--guests", "64,256,1024"),
          ("--guests", "64,256", "--repeat", "2"),
          "Bring-up: scalelab netns vs the shell floor (floor.sh)"),
    Bench("peers", "bench_peers_bringup.py", (), ("--quick", "--repeat", "2")),
    Bench("fanout", "bench_fanout.py", (), ("--repeat", "3")),
    Bench("report", "bench_report.py", (), ("--repeat", "1"),
          "Report rendering: 1,000,000 timing rows"),
    Bench("dom0", "bench_dom0_connect.py", (), ("--timeouts", "1,2", "--repeat", "3")),
    Bench("sampler", "bench_sampler.py", ("--guests", "64,256,1024"),
          ("--guests", "64,256", "--repeat", "2")),
    Bench("cluster", "bench_cluster.py", (), ("--guests", "48", "--repeat", "1", "--rounds", "5"),
          "Cluster: N guests over K local lab hosts against N on one host"),
    Bench("overlay", "bench_overlay.py", (), ("--repeat", "3", "--mib", "32", "--rounds", "500")),
    Bench("qemu", "bench_qemu.py", ("--guests", "1,4"), ("--guests", "2"),
          "QEMU (TCG) bring-up: VMs from the shared image to authenticated SSH"),
    # Last: after 4096 guests go down the kernel goes on freeing their namespaces for minutes
    # (load average in the hundreds), which would tax whatever ran next.
    Bench("scale", "bench_scale.py", ("--guests", "64,256,1024,4096", "--profile"),
          ("--guests", "64,256", "--rounds", "3", "--profile")),
)


def missing_prereqs() -> list[str]:
    """Human-readable lines for every missing package, with how to install it."""
    lines = []
    for module in missing_modules(PY_PACKAGES):
        lines.append(f"Python package {PY_PACKAGES[module]} is missing: "
                     f".venv/bin/pip install {PY_PACKAGES[module]}")
    for cmd in missing_commands(DEBIAN):
        lines.append(f"command {cmd} is missing: apt-get install {DEBIAN[cmd]}")
    return lines


def run_bench(bench: Bench, quick: bool) -> tuple[str, int, float, list[str]]:
    """Run one benchmark: its stdout (Markdown), exit status, wall seconds and the last
    lines of its stderr (shown live as well)."""
    argv = [sys.executable, str(HERE / bench.script), *(bench.quick if quick else bench.full)]
    log(f"== {bench.name}: {' '.join(argv[1:])} (load {loadavg()})")
    t0 = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=True,
                                cwd=HERE.parent)
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
            status = proc.wait()
        except KeyboardInterrupt:  # let the benchmark clean up what it made, then stop
            proc.terminate()
            proc.wait()
            raise
        out.seek(0)
        return out.read(), status, time.monotonic() - t0, list(tail)


def goal_lines(markdown: str) -> list[str]:
    """The "met / NOT met" lines of a benchmark's output."""
    return [ln for ln in markdown.splitlines() if re.search(r"\*\*(met|NOT met)\*\*", ln)]


Section = tuple[Bench, str, int, float, list[str]]


def compose(sections: list[Section], prereqs: list[str],
            quick: bool) -> str:
    """RESULTS.md: summary of goals, what was missing, then each benchmark's output."""
    parts = ["# scalelab benchmark results", "",
             f"Written by `bench/run_all.py{' --quick' if quick else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average at the end {loadavg()}. "
             "See bench/README.md for what each benchmark measures and how.", ""]
    goals = [g for _, out, _, _, _ in sections for g in goal_lines(out)]
    if goals:
        parts += ["## Goals", "", *goals, ""]
    if prereqs:
        parts += ["## Missing prerequisites", "", *[f"- {p}" for p in prereqs], ""]
    for bench, out, status, secs, tail in sections:
        body = out.strip() or "(no output)"
        if not body.startswith(("# ", "## ")):  # a body of ### sections gets a title too
            body = f"## {bench.title or bench.name}\n\n{body}"
        parts.append(body)
        note = f"_{bench.script}: {secs:.0f} s wall"
        parts += ["", note + (f", exited {status}_" if status else "_"), ""]
        if status:
            parts += ["Last lines of its stderr:", "", "```", *tail, "```", ""]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated: " +
                    ", ".join(b.name for b in BENCHES))
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("run_all: the benchmarks create namespaces, mounts and containers: run as root")
        return 2
    prereqs = missing_prereqs()
    for line in prereqs:
        log(f"run_all: {line} (that peer will be reported as not run)")
    trap_signals()
    only = {x for x in args.only.split(",") if x}
    sections: list[Section] = []
    for bench in BENCHES:
        if not only or bench.name in only:
            out, status, secs, tail = run_bench(bench, args.quick)
            sections.append((bench, out, status, secs, tail))
            log(out)
    text = compose(sections, prereqs, args.quick)
    args.out.write_text(text)
    log(f"run_all: wrote {args.out}")
    return max((s[2] for s in sections), default=0)


if __name__ == "__main__":
    sys.exit(main())
