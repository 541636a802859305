"""One L2 lab network across the lab hosts of a cluster lab (the client's side).

Every lab host's lab bridge is joined to the others by a VXLAN device (see
``harness.plumbing.vxlan``): one VNI per run, unicast to each peer lab host's underlay
address, static forwarding entries from the identities the run already knows.  The run has
one subnet; shard k's guests are numbered in its own block of it (block k), its bridge holds
the block's first address (so a lab host routes to its own guests only, even when emulated
lab hosts share one kernel), and the guests' prefix is the run subnet's (every guest on
link with every other).  The guests' MTU is the smallest underlay MTU less the 50 bytes
VXLAN over IPv4 adds, so no frame crossing the tunnel is fragmented or dropped.

**Underlay.**  A lab host's underlay address is ``SCALELAB_UNDERLAY`` in its Dask worker's
environment when set, else the address its Dask worker listens on; either must be an
address of one of its interfaces (whose MTU is the underlay MTU).  When every shard is on the
client's machine (``local:K``, or a scheduler whose lab workers all run here) each gets an
emulated lab host: a "host" network namespace
holding its underlay end, a veth to an underlay bridge in one more namespace, and its VXLAN
device's socket (the device itself, moved out, is a port of the shard's bridge here).  Frames
between shards really are encapsulated and cross that IP underlay (198.18.0.0/15, the
benchmarking range, seen nowhere but inside those namespaces).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.cluster.plan import LabWorker, allocate_subnets
from harness.errors import UserError
from harness.identity import prefix_for, run_tag
from harness.plumbing import host, vxlan
from harness.state import RunState

#: The emulated underlay of ``local:K`` (only ever inside the run's own namespaces).
EMULATED_UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
#: The MTU of the emulated underlay's links (an ordinary Ethernet's).
EMULATED_MTU = 1500
#: What a lab host's Dask worker may set to name its underlay address.
UNDERLAY_ENV = "SCALELAB_UNDERLAY"


@dataclass(frozen=True)
class Overlay:
    """How the lab hosts of one run are joined (sent to every shard with its spec)."""

    vni: int
    port: int
    mtu: int  # the guests' (underlay MTU - vxlan.OVERHEAD)
    underlay_mtu: int
    subnet: str  # the run's one subnet
    blocks: tuple[str, ...]  # shard k's guests' block of it
    underlay: tuple[str, ...]  # shard k's lab host's underlay address
    lab_hosts: tuple[str, ...]
    #: shard k's emulated host namespace ("" on a real lab host)
    host_netns: tuple[str, ...] = ()
    emulated: bool = False
    #: the emulated underlay bridge's namespace and its veths there (for the counters)
    underlay_netns: str = ""
    underlay_links: tuple[str, ...] = field(default=())

    def peers_of(self, k: int) -> list[str]:
        return [a for i, a in enumerate(self.underlay) if i != k]

    def guest_ip(self, k: int, index: int) -> ipaddress.IPv4Interface:
        """Shard k's guest ``index``: block k's address ``2 + index``, the run's prefix."""
        block = ipaddress.IPv4Network(self.blocks[k])
        net = ipaddress.IPv4Network(self.subnet)
        return ipaddress.IPv4Interface(f"{block.network_address + 2 + index}/{net.prefixlen}")

    def gateway(self, k: int) -> ipaddress.IPv4Address:
        """Shard k's bridge address (its lab host on the lab network)."""
        return ipaddress.IPv4Network(self.blocks[k]).network_address + 1

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "vxlan", "vni": self.vni, "port": self.port, "mtu": self.mtu,
            "underlay_mtu": self.underlay_mtu, "subnet": self.subnet,
            "underlay": dict(zip(self.lab_hosts, self.underlay, strict=True)),
            "blocks": dict(zip(self.lab_hosts, self.blocks, strict=True)),
            "emulated_underlay": str(EMULATED_UNDERLAY) if self.emulated else None,
            "forwarding": "static: a flood entry per peer, an entry per remote guest MAC",
        }


def allocate_blocks(sizes: Sequence[int], routes: Sequence[ipaddress.IPv4Network],
                    requested: str | None) -> tuple[ipaddress.IPv4Network, list[str]]:
    """The run's subnet (clear of every lab host's routes) and a block of it per shard."""
    block_prefix = prefix_for(max(sizes))
    run_prefix = block_prefix - (len(sizes) - 1).bit_length()
    if run_prefix < 8:
        raise UserError(f"{len(sizes)} shards of {max(sizes)} guests need more than a /8")
    net = allocate_subnets([(1 << (32 - run_prefix)) - 3], routes, requested)[0]
    blocks = list(net.subnets(new_prefix=max(block_prefix, net.prefixlen)))
    return net, [str(b) for b in blocks[: len(sizes)]]


def underlay_of(worker: LabWorker, facts: dict[str, Any], lab_host: str) -> tuple[str, int]:
    """(underlay address, its interface's MTU) of a real lab host, from its facts."""
    wanted = str(facts.get("underlay") or "")
    source = f"{UNDERLAY_ENV} of its worker" if wanted else "its Dask worker's address"
    if not wanted:
        try:
            wanted = socket.gethostbyname(worker.host)
        except OSError as exc:
            raise UserError(f"lab host {lab_host}: cannot resolve {worker.host} for its "
                            f"underlay address ({exc}); set {UNDERLAY_ENV}") from None
    mtus: dict[str, int] = facts.get("addresses") or {}
    if wanted not in mtus:
        raise UserError(f"lab host {lab_host}: its underlay address {wanted} ({source}) is "
                        f"not on any of its interfaces; set {UNDERLAY_ENV} in its worker's "
                        "environment to one that is")
    if ipaddress.IPv4Address(wanted).is_loopback:
        raise UserError(f"lab host {lab_host}: underlay address {wanted} is a loopback one; "
                        f"other lab hosts cannot reach it (set {UNDERLAY_ENV})")
    return wanted, int(mtus[wanted])


def emulate_underlay(state: RunState, run_id: str, k: int) -> tuple[list[str], str, list[str]]:
    """K emulated lab hosts on one underlay bridge, journalled in ``state`` before they
    exist: (host namespaces, underlay namespace, its veths).  Host k's underlay address is
    ``EMULATED_UNDERLAY`` host k+1."""
    tag = run_tag(run_id)
    under, bridge = f"slul-{tag}", "ulbr"
    hosts = [f"slh-{tag}-{i}" for i in range(k)]
    ends = [f"slw{tag}{i:x}" for i in range(k)]
    for ns in (under, *hosts):
        state.record("netns", name=ns)
    lines = [f"netns add {ns}" for ns in (under, *hosts)]
    for end, ns in zip(ends, hosts, strict=True):
        # Made here with one end in its host, the other moved to the underlay namespace.
        state.record("link", name=end, netns=under)
        lines += [f"link add {end} mtu {EMULATED_MTU} type veth peer name ul0 "
                  f"mtu {EMULATED_MTU} netns {ns}", f"link set {end} netns {under}"]
    host.ip_batch(lines)
    _in(under, [f"link add {bridge} type bridge", f"link set {bridge} up",
                *(f"link set {e} master {bridge} up" for e in ends)])
    hosts_net = list(EMULATED_UNDERLAY.hosts())
    for i, ns in enumerate(hosts):
        _in(ns, ["link set lo up", f"addr add {hosts_net[i]}/{EMULATED_UNDERLAY.prefixlen} "
                 "dev ul0", "link set ul0 up"])
    return hosts, under, ends


def emulated_address(i: int) -> str:
    return str(list(EMULATED_UNDERLAY.hosts())[i])


def _in(netns: str, lines: list[str]) -> None:
    host.check(["ip", "-n", netns, "-batch", "-"], stdin="\n".join(lines) + "\n",
               what=f"ip -n {netns} -batch")


def plan_overlay(run_id: str, port: int, subnet: ipaddress.IPv4Network, blocks: list[str],
                 lab_hosts: list[str], underlay: list[tuple[str, int]],
                 emulation: tuple[list[str], str, list[str]] | None = None) -> Overlay:
    """The run's overlay, from what the client decided and found."""
    mtu = min(m for _, m in underlay)
    if mtu - vxlan.OVERHEAD < 576:
        raise UserError(f"the lab hosts' underlay MTU {mtu} leaves the guests less than "
                        "576 bytes under VXLAN")
    hosts, under, ends = emulation or ([], "", [])
    return Overlay(
        vni=vxlan.vni_for(run_id), port=port, mtu=mtu - vxlan.OVERHEAD, underlay_mtu=mtu,
        subnet=str(subnet), blocks=tuple(blocks), underlay=tuple(a for a, _ in underlay),
        lab_hosts=tuple(lab_hosts), host_netns=tuple(hosts), emulated=emulation is not None,
        underlay_netns=under, underlay_links=tuple(ends),
    )


def unreachable_pairs(overlay: Overlay, seen: Sequence[set[str]]) -> list[str]:
    """Every pair of lab hosts that did not both see the other's probe, said plainly."""
    problems = []
    names = overlay.lab_hosts
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            ways = []
            if names[a] not in seen[b]:
                ways.append(f"{names[a]} → {names[b]}")
            if names[b] not in seen[a]:
                ways.append(f"{names[b]} → {names[a]}")
            if ways:
                problems.append(
                    f"lab hosts {names[a]} ({overlay.underlay[a]}) and {names[b]} "
                    f"({overlay.underlay[b]}) cannot exchange VXLAN packets on UDP port "
                    f"{overlay.port} ({', '.join(ways)} lost)")
    return problems
