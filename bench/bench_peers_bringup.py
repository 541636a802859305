"""Bring-up against peers: scalelab's netns backend, a copy per guest, and standard CoW tools.

For each N, each repetition brings up N guests with every peer of ``peers.py`` in turn (the
order rotates between repetitions), each paired with a scalelab bring-up (a ``Session`` and
``lab_up``) just before or after it, alternately; the ratio of a pair compares two runs made
under the same load of this shared host, and the table gives the median ratio. It measures
the seconds from nothing to the moment every guest has completed an authenticated SSH
command (scalelab's own readiness check for every one: pinned host key, RejectPolicy,
``cat /etc/hostname`` must print the guest's name), then the disk each guest's own layer
(or copy) takes and the memory (PSS of the guest's process tree, the tool's per-guest
monitor included) while the readiness connections are still open.

    python bench/bench_peers_bringup.py [--guests 8,32,64] [--scalelab-only 256,1024]
                                         [--peers copy,nspawn,lxc,podman] [--repeat 3]
                                         [--quick]

Prints Markdown on stdout (progress on stderr). Needs root.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    PROJECT,
    Cleanup,
    du_bytes,
    fmt,
    header,
    log,
    md_table,
    median,
    missing_commands,
    mount_image_ro,
    short_tag,
    trap_signals,
    tree_pss,
)
from peers import PEERS, LabNet, Peer, bring_up, write_identity

from harness.config import build_config
from harness.identity import KeyPair, choose_subnet, make_specs
from harness.image.build import sha256_file
from harness.preflight import preflight_lab
from harness.session import Session
from harness.ssh import load_private_key

NOTES = """What it took to run the standard tools on this machine (no systemd as PID 1, cgroup v1
with a cgroup2 hierarchy holding `hugetlb`, root without CAP_SYS_RESOURCE):

- systemd-nspawn: `--register=no --keep-unit` (no machined, no systemd to make a scope);
  `--capability=CAP_NET_ADMIN`, as nspawn drops it when joining a network namespace
  (`RTNETLINK answers: Operation not permitted` from the guest's `ip addr add` otherwise);
  `SYSTEMD_NSPAWN_LOCK=0` so many containers can share one read-only directory.
- podman: Debian's default runtime crun fails with `crun: cgroups in hybrid mode not supported,
  drop all controllers from cgroupv2` (the host's /sys/fs/cgroup/unified has `hugetlb`), so
  `--runtime runc --cgroup-manager cgroupfs --events-backend file`; its default rlimits fail
  (`setrlimit RLIMIT_NOFILE: Operation not permitted`, then RLIMIT_NPROC), so explicit
  `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096`; `--network ns:<our netns>` instead of
  its bridge network (which would add NAT); `--cap-add NET_ADMIN` for the guest's address.
- LXC: ran as packaged (lxc-net is not started: no lxcbr0, no NAT); a private lxcpath and
  `lxc-copy -e -D -B overlay -m bind=…` (the identity directory) per guest.
- Every peer guest runs the same init script (address, loopback, `exec sshd` with the guest's
  pinned host key); every tool's guests are checked with scalelab's readiness code.
"""

SSH_CONCURRENCY = 32  # scalelab's default --ssh-concurrency, used for every peer too
TIMEOUT = 120.0


@dataclass
class Sample:
    """One bring-up: seconds, median disk and memory per guest (bytes)."""

    seconds: float
    disk: float | None
    memory: float | None


@dataclass
class Series:
    """All repetitions of one tool at one N, and the last error if any failed."""

    samples: list[Sample] = field(default_factory=list)
    #: seconds ÷ the seconds of the scalelab run paired with it, per repetition
    ratios: list[float] = field(default_factory=list)
    error: str | None = None

    def med(self, attr: str) -> float | None:
        vals = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return median(vals) if vals else None


def _median_of(values: dict[str, int]) -> float | None:
    return median(list(values.values())) if values else None


# -- scalelab --------------------------------------------------------------------------------


def scalelab_once(n: int, reports: Path) -> Sample:
    """A Session bringing up ``n`` netns guests, from nothing to every guest answering SSH."""
    cfg = build_config({"guests": str(n), "reports_dir": str(reports)}, PROJECT)
    image = preflight_lab(cfg, n)
    t0 = time.monotonic()
    session = Session(cfg, image=image)
    try:
        lab = session.lab_up(n)
        elapsed = time.monotonic() - t0
        procs = getattr(lab.backend, "_procs", {})
        memory = tree_pss({name: p.pid for name, p in procs.items()})
        uppers = {g.name: Path(g.info["upper"]) for g in lab.guests if "upper" in g.info}
        disk = du_bytes(uppers)
    finally:
        session.finish(render=False)
    return Sample(elapsed, _median_of(disk), _median_of(memory))


# -- peers -----------------------------------------------------------------------------------


def peer_once(kind: type[Peer], n: int, image: Path) -> Sample:
    """Bring up ``n`` guests with one peer; everything it made is removed before returning."""
    cleanup = Cleanup()
    work = Path(tempfile.mkdtemp(prefix="scalelab-peers-", dir="/var/tmp"))
    cleanup.add(f"rm {work}", lambda: shutil.rmtree(work, ignore_errors=True))
    clients = {}
    try:
        t0 = time.monotonic()
        base = mount_image_ro(image, work / "base", cleanup)
        tag = short_tag(kind.name)
        net = LabNet(tag, choose_subnet(None, n), cleanup)
        net.up()
        specs = make_specs(f"peer-{tag}", n, net.subnet)
        client_key = KeyPair.generate(f"bench-{tag}")
        idents = {s.name: write_identity(s, client_key.public_openssh, work / "ids" / s.name)
                  for s in specs}
        peer = kind(work, base, net, cleanup)
        peer.prepare()
        if peer.uses_netns:
            net.add_guests(specs)
        clients = bring_up(peer, specs, idents, load_private_key(client_key.private_openssh),
                           SSH_CONCURRENCY, TIMEOUT)
        elapsed = time.monotonic() - t0
        memory = tree_pss(peer.root_pids())
        disk = peer.disk(clients)
        return Sample(elapsed, _median_of(disk), _median_of(memory))
    except BaseException:
        _show_logs(work)
        raise
    finally:
        for c in clients.values():
            c.close()
        for problem in cleanup.run():
            log(f"  cleanup: {problem}")


def _show_logs(work: Path, lines: int = 5) -> None:
    """The end of the first guest logs of a failed bring-up, for the reader of stderr."""
    for f in sorted(work.glob("*.log"))[:2]:
        tail = f.read_text(errors="replace").splitlines()[-lines:]
        log(f"  {f.name}: " + " | ".join(tail))


# -- driver ----------------------------------------------------------------------------------


def _attempt(tool: str, n: int, image: Path, reports: Path,
             results: dict[tuple[int, str], Series]) -> Sample | None:
    """One bring-up of ``tool`` at ``n``, kept in ``results``; None if it failed."""
    series = results.setdefault((n, tool), Series())
    if series.error and not series.samples:
        return None  # a tool that failed once at this N will fail again
    try:
        sample = (scalelab_once(n, reports) if tool == "scalelab"
                  else peer_once(PEERS[tool], n, image))
    except Exception as exc:
        series.error = f"{type(exc).__name__}: {exc}"
        log(f"N={n} {tool}: FAILED {series.error}")
        log(traceback.format_exc(limit=3))
        return None
    series.samples.append(sample)
    log(f"N={n} {tool}: {sample.seconds:.2f} s")
    return sample


def run_series(names: list[str], sizes: list[int], repeat: dict[str, int], image: Path,
               reports: Path, only_scalelab: set[int]) -> dict[tuple[int, str], Series]:
    """Every peer at every N, ``repeat[peer]`` times, each run paired with a scalelab run
    just before or after it (alternating), so that a ratio compares two runs under the same
    load of this shared host; failures are kept as data."""
    results: dict[tuple[int, str], Series] = {}
    for n in sizes:
        if n in only_scalelab:
            for _ in range(repeat["scalelab"]):
                _attempt("scalelab", n, image, reports, results)
            continue
        for rep in range(max(repeat.values())):
            for peer in names[rep % len(names):] + names[:rep % len(names)]:
                if rep >= repeat.get(peer, repeat["scalelab"]):
                    continue
                pair = ["scalelab", peer] if rep % 2 == 0 else [peer, "scalelab"]
                got = {t: _attempt(t, n, image, reports, results) for t in pair}
                sl, other = got["scalelab"], got[peer]
                if sl and other:
                    results[(n, peer)].ratios.append(other.seconds / sl.seconds)
    return results


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The peers whose commands exist here, and why the others cannot run."""
    ok, why = [], {}
    for name in names:
        missing = missing_commands(PEERS[name].commands)
        if missing:
            why[name] = f"missing commands: {', '.join(missing)} (see bench/README.md)"
        else:
            ok.append(name)
    return ok, why


def _label(tool: str) -> str:
    return "scalelab netns" if tool == "scalelab" else PEERS[tool].name


def table(results: dict[tuple[int, str], Series]) -> str:
    """One row per (N, tool): seconds, ratio to scalelab, disk and memory per guest."""
    rows = []
    for (n, tool), s in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1] != "scalelab")):
        secs = s.med("seconds")
        ratio = 1.0 if tool == "scalelab" else (median(s.ratios) if s.ratios else None)
        disk, mem = s.med("disk"), s.med("memory")
        rows.append((
            n, _label(tool), fmt(secs), fmt(ratio, 2, "×"),
            fmt(disk / 1024 if disk is not None else None, 0),
            fmt(mem / 2**20 if mem is not None else None, 1),
            len(s.samples), s.error or "",
        ))
    return md_table(["N", "tool", "bring-up s", "÷ scalelab (paired)", "disk KiB/guest",
                     "memory MiB/guest (PSS)", "runs", "error"], rows, "rlrrrrrl")


def goals(results: dict[tuple[int, str], Series], n: int = 64) -> str:
    """The issue's goals at N = ``n``, stated plainly."""
    def med(tool: str, attr: str = "seconds") -> float | None:
        s = results.get((n, tool))
        return s.med(attr) if s else None

    def ratio(tool: str) -> float | None:
        s = results.get((n, tool))
        return median(s.ratios) if s and s.ratios else None

    lines = [f"Goals at N = {n} (ratios: medians of paired runs):", ""]
    copy = ratio("copy")
    if copy:
        lines.append(f"- ≥ 5× faster than copy-per-guest: **{'met' if copy >= 5 else 'NOT met'}** "
                     f"(copy takes {copy:.1f}× scalelab's time)")
    tools = {t: r for t in ("nspawn", "lxc", "podman") if (r := ratio(t))}
    if tools:
        best = min(tools, key=lambda t: tools[t])
        r = tools[best]
        lines.append(f"- faster than the standard tools: **{'met' if r > 1 else 'NOT met'}** "
                     f"(fastest standard tool {PEERS[best].name} takes {r:.2f}× scalelab's time)")
    disk = med("scalelab", "disk")
    if disk is not None:
        cdisk = med("copy", "disk")
        vs = f" against {cdisk / 2**20:.0f} MiB for a copy" if cdisk else ""
        lines.append(f"- disk per guest ≤ 64 KiB: **{'met' if disk <= 65536 else 'NOT met'}** "
                     f"({disk / 1024:.0f} KiB{vs})")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--guests", default="8,32,64", help="sizes for every tool")
    ap.add_argument("--scalelab-only", default="256,1024", help="sizes for scalelab alone")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"of {', '.join(PEERS)}")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--copy-repeat", type=int, default=1,
                    help="repetitions of copy-per-guest (minutes each at N = 64; default 1)")
    ap.add_argument("--quick", action="store_true", help="N = 8 and 64 only, no scalelab-only")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trap_signals()
    if args.quick:
        args.guests, args.scalelab_only = "8,64", ""
    only = {int(x) for x in args.scalelab_only.split(",") if x}
    sizes = sorted({int(x) for x in args.guests.split(",") if x} | only)
    names, why = available([p for p in args.peers.split(",") if p])
    image = preflight_lab(build_config({}, PROJECT), 1).path
    digest = sha256_file(image)
    head = header("Bring-up: scalelab netns vs copy-per-guest vs standard CoW tools",
                  args.repeat, f"copy-per-guest: {min(args.copy_repeat, args.repeat)} "
                  f"repetition(s) (the `runs` column); image {image.name} sha256 "
                  f"{digest.removeprefix('sha256:')[:16]}…")
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-") as tmp:
        repeat = {t: args.repeat for t in ["scalelab", *names]}
        repeat["copy"] = min(args.copy_repeat, args.repeat)
        results = run_series(names, sizes, repeat, image, Path(tmp), only)
    after = sha256_file(image)
    out = [head, table(results), goals(results)]
    if why:
        out.append("Not run: " + "; ".join(f"{k}: {v}" for k, v in why.items()) + "\n")
    out.append(NOTES)
    out.append(f"Image sha256 unchanged after the run: {'yes' if after == digest else 'NO'}.\n")
    print("\n".join(out))
    return 0 if after == digest else 1


if __name__ == "__main__":
    sys.exit(main())
