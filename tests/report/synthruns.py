"""Synthetic runs for the report tests, recorded through the real Store API.

A module of its own (not conftest.py) so tests can import ``RunSpec`` by a unique name.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.store import Context, Recorder, Store

RUN_ID = "20261125-194500-3fa2c1"
T0 = datetime(2026, 11, 25, 19, 45, 0, tzinfo=UTC)
BRINGUP = (
    ("created", 0.004),
    ("started", 0.05),
    ("tcp", 0.01),
    ("banner", 0.02),
    ("auth", 0.03),
    ("first_command", 0.015),
)
SEC = 1_000_000_000


@dataclass(frozen=True)
class RunSpec:
    """What a synthetic run looks like; ``latency_factor`` scales every workload latency."""

    run_id: str = RUN_ID
    start: datetime = T0
    ns: Sequence[int] = (2, 4, 8)
    ops_per_guest: int = 12
    scenario: str = "test_ssh_roundtrip"
    op: str = "roundtrip"
    base_latency: float = 0.010
    latency_factor: float = 1.0
    faults: bool = True
    failures: bool = True
    #: Every this-many-th operation of the run fails besides (0: none), for a success rate
    #: a little lower than another run's.
    fail_every: int = 0
    metrics: bool = True
    finish: bool = True
    report_tz: str | None = "America/El_Salvador"
    seed: int = 1


def write_run_json(run_dir: Path, spec: RunSpec) -> None:
    info: dict[str, Any] = {
        "run_id": spec.run_id,
        "started_utc": spec.start.isoformat(),
        "command_line": ["pytest", "scenarios/", f"--guests={','.join(map(str, spec.ns))}"],
        "backend": {"name": "netns", "options": {}, "accel": None},
        "guests": list(spec.ns),
        "image": {"digest": "sha256:" + "ab" * 32, "path": "/var/cache/scalelab/base.img"},
        "machine": {
            "hostname": "lab-host-1",
            "cpus": 2,
            "memory_bytes": 25_000_000_000,
            "platform": "Linux-6.18.44-x86_64",
        },
        "kernel": "6.18.44",
        "python": "3.11.7",
        "packages": {"paramiko": "5.1.0", "pandas": "3.1.1"},
        "git_commit": None,
        "outcome": {"passed": len(spec.ns), "failed": 0},
        "clock_offsets": {"lab-host-1": 0.0003},
    }
    if spec.report_tz is not None:
        info["report_tz"] = spec.report_tz
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))


def _bringup(rec: Recorder, guests: list[str], t: int, rng: random.Random) -> int:
    """Consecutive bring-up steps per guest, staggered starts; returns when all were ready."""
    ready = t
    for i, guest in enumerate(guests):
        s = t + i * 8_000_000
        for op, mean in BRINGUP:
            e = s + int(mean * (0.7 + 0.6 * rng.random()) * SEC)
            rec.timing(op, s, e, guest=guest, phase="bringup")
            s = e
        ready = max(ready, s)
    return ready


def _workload(
    rec: Recorder, spec: RunSpec, n: int, guests: list[str], t: int, rng: random.Random
) -> int:
    """Each guest runs its ops back to back; latency grows with N (contention), plus noise.

    At the largest N a fault window kills guest 1: it is lost and its later ops fail.
    """
    contention = 1.0 + 0.35 * math.log2(n)
    victim, kill_at = None, None
    if spec.faults and n == max(spec.ns):
        victim = guests[1]
        kill_at = t + int(spec.ops_per_guest * spec.base_latency * contention * SEC / 2)
        rec.timing("kill", kill_at, kill_at + SEC // 20, guest=victim, phase="fault")
        rec.timing("pause", t, t + SEC // 50, guest=guests[0], phase="fault")
        rec.timing(
            "lost",
            kill_at,
            kill_at,
            guest=victim,
            phase="lost",
            ok=False,
            error_class="lost",
            error="guest stopped answering after kill",
        )
    end = t
    for i, guest in enumerate(guests):
        s = t
        for k in range(spec.ops_per_guest):
            lat = spec.base_latency * spec.latency_factor * contention
            lat *= math.exp(rng.gauss(0, 0.25))
            e = s + int(lat * SEC)
            if guest == victim and kill_at is not None and s >= kill_at:
                rec.timing(
                    spec.op,
                    s,
                    e,
                    guest=guest,
                    ok=False,
                    error_class="lost",
                    error=f"{guest}: connection reset by peer",
                )
            elif spec.fail_every and (i * spec.ops_per_guest + k) % spec.fail_every == 0:
                rec.timing(spec.op, s, e, guest=guest, ok=False, error_class="exit",
                           error=f"{guest}: exit status 1", exit_status=1)
            elif spec.failures and k == 3 and guest == guests[-1]:
                rec.timing(
                    spec.op,
                    s,
                    e,
                    guest=guest,
                    ok=False,
                    error_class="timeout",
                    error=f"{guest}: no answer within 5.0 s",
                    exit_status=None,
                )
            else:
                rec.timing(spec.op, s, e, guest=guest, exit_status=0)
            if spec.metrics and k % 3 == 0:
                rec.metric("cpu_util", 20 + 10 * rng.random() * n, unit="%", guest=guest, t_ns=s)
                rec.metric("rss", 30e6 + 1e6 * k, unit="bytes", guest=guest, t_ns=s)
            s = e
        end = max(end, s)
    return end


def make_run(run_dir: Path, spec: RunSpec | None = None) -> Path:
    """Record a whole synthetic run into ``run_dir`` (bring-up, workload, faults, teardown)."""
    spec = spec or RunSpec()
    rng = random.Random(spec.seed)
    store = Store(run_dir, Context(run_id=spec.run_id, lab_host="lab-host-1"))
    t = int(spec.start.timestamp() * SEC)
    for n in spec.ns:
        rec = store.scoped(scenario=f"{spec.scenario}[n={n}]", n_guests=n)
        guests = [f"g{i:03d}" for i in range(n)]
        t = _bringup(rec, guests, t, rng)
        t = _workload(rec, spec, n, guests, t + SEC // 100, rng)
        for guest in guests:
            rec.timing("down", t, t + 2_000_000, guest=guest, phase="teardown")
        t += SEC // 2
    if spec.finish:
        store.finish()
    else:
        store.close()
    write_run_json(run_dir, spec)
    return run_dir
