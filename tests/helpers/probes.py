"""UDP probes between guests (the netprobe agent) and binomial bounds for what they count."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import harness.workloads
from harness.ssh import FanOut
from harness.workloads import REMOTE_DIR, Agents

PORT = 9077
AGENT = Path(harness.workloads.__file__).parent / "agents" / "netprobe.py"


@dataclass(frozen=True)
class Probed:
    sent: int
    received: int
    duplicates: int
    lost: int
    rtt_median_ms: float
    rtts: tuple[float, ...]


def start_echo(agents: Agents, server: str) -> None:
    """The netprobe agent on every guest, and its UDP echo serving on ``server``."""
    # Deployed by path: the agent ships with the harness but is not in workloads' BUILTIN.
    agents.deploy(AGENT)
    started = agents.serve("netprobe-echo", ["python3", f"{REMOTE_DIR}/netprobe.py", "echo",
                                             str(PORT)], names=[server])
    assert started.ok, started.failed


def probe(fleet: FanOut, src: str, dst: str, count: int = 500, interval: float = 0.002,
          wait: float = 1.0) -> Probed:
    """``count`` probes from guest ``src`` to guest ``dst``'s echo, one per ``interval``."""
    address = fleet.guests[dst].spec.address
    cmd = (f"python3 {REMOTE_DIR}/netprobe.py probe {address} {PORT} {count} {interval} "
           f"{wait} --rtts")
    res = fleet.run(cmd, names=[src], timeout=120)[src]
    assert res.exit_status == 0, res.stderr
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    one = {d["metric"]: d["value"] for d in lines if d["metric"] != "rtt_ms"}
    rtts = tuple(float(d["value"]) for d in lines if d["metric"] == "rtt_ms")
    return Probed(int(one["sent"]), int(one["received"]), int(one["duplicates"]),
                  int(one["lost"]), float(one["rtt_median_ms"]), rtts)


def binomial_bounds(n: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    """Where a Binomial(n, p) count lies but for about 1 in 16 000 runs (4 σ)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def median_rtt(fleet: FanOut, src: str, dst: str, count: int = 30,
               interval: float = 0.05) -> float:
    """Median guest-to-guest UDP round trip, ms (VMs under TCG are slow: few, spaced)."""
    return median(list(probe(fleet, src, dst, count=count, interval=interval, wait=2.0).rtts))


def ssh_rtt(fleet: FanOut, name: str, rounds: int = 9) -> float:
    """Median seconds of a `true` over the harness's own SSH connection to ``name``."""
    return median([fleet.run("true", names=[name]).results[name].duration_s
                   for _ in range(rounds)])
