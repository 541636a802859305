"""The pure parts of a cluster lab: ``--cluster`` parsing, placement, subnets, identity
checks across shards and the clock offset estimate.  No Dask here (see the package doc)."""

from __future__ import annotations

import ipaddress
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.config import MAX_GUESTS
from harness.errors import LabError, UserError
from harness.identity import DEFAULT_POOL, prefix_for, shared_identities

#: Seconds the client waits for a scheduler (or a worker) to answer.
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClusterSpec:
    """What ``--cluster`` asked for: K local workers, or a scheduler's address."""

    text: str
    local_workers: int = 0
    address: str = ""

    @property
    def local(self) -> bool:
        return self.local_workers > 0


def parse_cluster(text: str) -> ClusterSpec:
    """``local:K`` or ``tcp://host:port`` / ``tls://host:port``; anything else is a UserError."""
    raw = text.strip()
    m = re.fullmatch(r"local:(\S*)", raw)
    if m:
        try:
            k = int(m.group(1))
        except ValueError:
            raise UserError(f"--cluster={raw!r}: K in local:K is not a whole number") from None
        if k < 1:
            raise UserError(f"--cluster={raw!r}: local:K needs at least one worker (K >= 1)")
        return ClusterSpec(raw, local_workers=k)
    m = re.fullmatch(r"(tcp|tls)://([^/:\s]+|\[[0-9a-fA-F:]+\]):(\d+)/?", raw)
    if m:
        return ClusterSpec(raw, address=raw.rstrip("/"))
    raise UserError(
        f"--cluster={raw!r}: give local:K (K local workers) or the Dask scheduler's address, "
        "e.g. tcp://scheduler:8786"
    )


@dataclass(frozen=True)
class LabWorker:
    """A Dask worker that is a lab host: its address and declared capacity (None: unsaid)."""

    address: str
    capacity: int | None = None

    @property
    def host(self) -> str:
        """The worker's host part (``tcp://10.0.0.5:4321`` → ``10.0.0.5``)."""
        rest = self.address.split("://", 1)[-1]
        return rest.rsplit(":", 1)[0].strip("[]")


def place(n: int, workers: Sequence[LabWorker]) -> list[tuple[LabWorker, int]]:
    """Split ``n`` guests over ``workers`` (see the package doc); drops hosts given none."""
    if not workers:
        raise UserError("the cluster has no lab host (no worker with the `lab` resource)")
    caps = [w.capacity if w.capacity is not None else MAX_GUESTS for w in workers]
    if n > sum(caps):
        raise UserError(
            f"{n} guests asked, but the {len(workers)} lab host(s) hold at most {sum(caps)} "
            f"({', '.join(str(c) for c in caps)})"
        )
    weighted = all(w.capacity is not None for w in workers)
    weights = [float(c) if weighted else 1.0 for c in caps]
    counts = _water_fill(n, weights, caps)
    return [(w, c) for w, c in zip(workers, counts, strict=True) if c > 0]


def _water_fill(n: int, weights: list[float], caps: list[int]) -> list[int]:
    """Largest-remainder split of ``n`` by ``weights``, never above ``caps``."""
    counts = [0] * len(weights)
    left = n
    while left > 0:
        open_ = [i for i in range(len(weights)) if counts[i] < caps[i] and weights[i] > 0]
        total = sum(weights[i] for i in open_)
        shares = {i: left * weights[i] / total for i in open_}
        give = {i: min(int(shares[i]), caps[i] - counts[i]) for i in open_}
        rest = left - sum(give.values())
        by_remainder = sorted(open_, key=lambda i: (-(shares[i] - int(shares[i])), i))
        for i in by_remainder:
            if rest == 0:
                break
            if counts[i] + give[i] < caps[i]:
                give[i] += 1
                rest -= 1
        for i, g in give.items():
            counts[i] += g
        left = n - sum(counts)
    return counts


def lab_host_names(hostnames: Sequence[str]) -> list[str]:
    """A name per lab host: its hostname, or ``host-wI`` when several workers share a host."""
    seen: dict[str, int] = defaultdict(int)
    for h in hostnames:
        seen[h] += 1
    taken: dict[str, int] = defaultdict(int)
    out = []
    for h in hostnames:
        if seen[h] == 1:
            out.append(h)
        else:
            out.append(f"{h}-w{taken[h]}")
            taken[h] += 1
    return out


def allocate_subnets(
    sizes: Sequence[int],
    routes: Iterable[ipaddress.IPv4Network],
    requested: str | None = None,
) -> list[ipaddress.IPv4Network]:
    """Disjoint subnets, one per shard size, none overlapping ``routes``.

    With ``requested`` (``--subnet``) the shards' subnets are carved out of it, each sized
    for the largest shard; otherwise they come from the default pool.
    """
    prefix = prefix_for(max(sizes))
    taken = list(routes)
    if requested not in (None, "", "auto"):
        try:
            pool = ipaddress.IPv4Network(requested)
        except ValueError as exc:
            raise UserError(f"--subnet {requested!r} is not an IPv4 network: {exc}") from None
        if pool.prefixlen > prefix:
            raise UserError(
                f"subnet {pool} is too small for shards of {max(sizes)} guests: "
                f"use a /{prefix - (len(sizes) - 1).bit_length()} or larger"
            )
        for r in taken:
            if pool.overlaps(r):
                raise UserError(
                    f"subnet {pool} overlaps the host route {r} (on a lab host); "
                    "choose another with --subnet"
                )
        candidates: Iterable[ipaddress.IPv4Network] = pool.subnets(new_prefix=prefix)
        where = f"subnet {pool}"
    else:
        candidates = DEFAULT_POOL.subnets(new_prefix=max(prefix, DEFAULT_POOL.prefixlen))
        where = f"the pool {DEFAULT_POOL}"
    chosen: list[ipaddress.IPv4Network] = []
    for net in candidates:
        if len(chosen) == len(sizes):
            break
        if not any(net.overlaps(r) for r in taken):
            chosen.append(net)
            taken.append(net)
    if len(chosen) < len(sizes):
        raise UserError(
            f"{where} has room for {len(chosen)} of the {len(sizes)} shards' /{prefix} "
            "subnets (other labs may be up: `scalelab ls`); give a larger one with --subnet"
        )
    return chosen


def check_identities(identities: Iterable[Mapping[str, str]]) -> None:
    """Fail, naming the guests and their lab hosts, if any two guests of the whole lab share
    a name, MAC, IP, machine-id or host key (``harness.identity.preflight``'s rules)."""
    problems = shared_identities((f"{r['name']}@{r['lab_host']}", r) for r in identities)
    if problems:
        raise LabError("identity preflight across lab hosts failed: " + "; ".join(problems))


def clock_offset(samples: Sequence[tuple[int, int, int]]) -> tuple[float, float]:
    """(offset, round trip) in seconds, medians over ``(t_sent, t_shard, t_received)`` ns."""
    if not samples:
        raise ValueError("no clock samples")
    offsets = [(ts - (t0 + t3) / 2) / 1e9 for t0, ts, t3 in samples]
    trips = [(t3 - t0) / 1e9 for t0, _, t3 in samples]
    return statistics.median(offsets), statistics.median(trips)
