"""VXLAN devices that join the lab bridges of several lab hosts into one L2 network.

iproute2's semantics (ip-link(8) ``type vxlan``, bridge(8) ``fdb``), as containerlab's
``vxlan`` links use them: one device per lab host with the run's VNI, its ``local`` underlay
address and UDP port, ``nolearning`` (no multicast group, nothing learnt from the wire), and
static forwarding entries: one all-zeros entry per peer lab host (``bridge fdb append
00:00:00:00:00:00 dev D dst PEER``), so broadcasts (ARP) are sent to every peer by head-end
replication, and one entry per remote guest MAC, so unicast goes straight to the guest's host.

A device made in another network namespace (an emulated lab host) and moved into this one
keeps its UDP socket in the namespace it was made in (``link-netns``): the frames the bridge
hands it are encapsulated and leave through that namespace's underlay.

The pre-boot probe sends broadcast frames of a local-experimental EtherType on the device
itself, which the device floods to every peer; a peer's device hands the decapsulated frame
to a packet socket bound to it.  A frame from A seen on B proves A → B works on the underlay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import LabError
from harness.plumbing import host

#: What VXLAN over IPv4 adds to a guest's frame: outer IPv4 (20) + UDP (8) + VXLAN (8)
#: headers and the inner Ethernet header (14).  The guests' MTU is the underlay's minus this.
OVERHEAD = 50
#: IANA's port for VXLAN (RFC 7348); Linux's own default (8472) predates it.
DEFAULT_PORT = 4789
#: IEEE 802 local experimental EtherType 1: never a protocol a guest speaks.
PROBE_ETHERTYPE = 0x88B5
BROADCAST = b"\xff" * 6


def device_name(tag: str) -> str:
    return f"slx{tag}"


def vni_for(run_id: str) -> int:
    """A 24-bit VNI from the run id (never 0): one per run, the same on every lab host."""
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:6], 16) or 1


def create(name: str, vni: int, local: str, port: int, netns: str = "") -> None:
    """Make the device (in ``netns`` when given, then moved here) with ``local`` as its
    underlay address; it is not up yet."""
    add = f"link add {name} type vxlan id {vni} local {local} dstport {port} nolearning"
    if not netns:
        host.ip_batch([add])
        return
    host.check(["ip", "-n", netns, *add.split()], what=f"making {name} in {netns}")
    # Into this process's namespace, the socket staying where it was made.
    host.check(["ip", "-n", netns, "link", "set", name, "netns", str(os.getpid())],
               what=f"moving {name} out of {netns}")


def fdb_lines(name: str, peers: Sequence[str], macs: Mapping[str, str]) -> list[str]:
    """``bridge -batch`` lines: a flood entry per peer underlay address, and an entry per
    remote guest MAC (``macs``: MAC → its lab host's underlay address)."""
    lines = [f"fdb append 00:00:00:00:00:00 dev {name} dst {p} self permanent" for p in peers]
    lines += [f"fdb replace {mac} dev {name} dst {dst} self permanent"
              for mac, dst in sorted(macs.items())]
    return lines


def apply_fdb(lines: Sequence[str]) -> None:
    if lines:
        host.check(["bridge", "-batch", "-"], stdin="\n".join(lines) + "\n",
                   what="bridge -batch (vxlan forwarding entries)")


def fdb_entries(name: str) -> list[str]:
    """The device's own forwarding entries, as ``bridge fdb show`` prints them."""
    out = host.run(["bridge", "fdb", "show", "dev", name])
    return [ln for ln in out.stdout.splitlines() if "dst" in ln]


def interface_mtus(netns: str = "") -> dict[str, int]:
    """IPv4 address → the MTU of the interface that holds it (in ``netns`` when given)."""
    argv = ["ip", "-j", "-4", "addr", "show"]
    if netns:
        argv = ["ip", "-n", netns, *argv[1:]]
    res = host.run(argv)
    if not res.ok:
        return {}
    out: dict[str, int] = {}
    for link in json.loads(res.stdout or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                out[str(addr["local"])] = int(link.get("mtu", 1500))
    return out


# -- the pre-boot probe ------------------------------------------------------------------


@dataclass
class ProbeState:
    """What one lab host has seen of the others during a probe."""

    me: str
    peers: frozenset[str]
    seen: set[str] = field(default_factory=set)  # peers whose frames arrived here
    seen_me: set[str] = field(default_factory=set)  # peers that said they saw ours

    @property
    def done(self) -> bool:
        return self.seen >= self.peers and self.seen_me >= self.peers


def _frame(src_mac: bytes, payload: dict[str, object]) -> bytes:
    return BROADCAST + src_mac + PROBE_ETHERTYPE.to_bytes(2, "big") + json.dumps(payload).encode()


def probe(device: str, run_id: str, me: str, peers: Sequence[str],
          timeout: float = 5.0, every: float = 0.1) -> set[str]:
    """Exchange probe frames with ``peers`` (lab host names) over ``device``; the peers
    whose frames arrived here.  Keeps sending until every peer has said it saw ours too
    (each frame carries what its sender has seen), or ``timeout``."""
    state = ProbeState(me, frozenset(peers))
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(PROBE_ETHERTYPE))
    except OSError as exc:
        raise LabError(f"vxlan probe: no packet socket ({exc})") from None
    with contextlib.closing(sock):
        sock.bind((device, PROBE_ETHERTYPE))
        mac = Path(f"/sys/class/net/{device}/address").read_text().strip()
        src = bytes.fromhex(mac.replace(":", ""))
        deadline = time.monotonic() + timeout
        linger = 3  # rounds sent after we are done, for peers still waiting on us
        while time.monotonic() < deadline and linger > 0:
            sock.send(_frame(src, {"run": run_id, "from": me, "seen": sorted(state.seen)}))
            _receive(sock, state, run_id, time.monotonic() + every)
            if state.done:
                linger -= 1
    return state.seen


def _receive(sock: socket.socket, state: ProbeState, run_id: str, until: float) -> None:
    while (left := until - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return
        data = sock.recv(2048)
        try:
            msg = json.loads(data[14:].rstrip(b"\0"))
        except ValueError:
            continue
        if not isinstance(msg, dict) or msg.get("run") != run_id:
            continue
        sender = str(msg.get("from"))
        if sender in state.peers:
            state.seen.add(sender)
            if state.me in msg.get("seen", []):
                state.seen_me.add(sender)
