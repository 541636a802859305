"""A shard's end of the lab network (see ``harness.cluster.overlay``): its VXLAN device
with the run's forwarding entries, the pre-boot probe, joining the device to the shard's
bridge, and partitions by MAC that hold across lab hosts.  Everything is journalled in the
shard's own run state before it exists, so ``scalelab clean`` on the lab host removes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.cluster.overlay import Overlay
from harness.identity import run_tag
from harness.plumbing import host, nft, vxlan
from harness.state import RunState


class Tunnel:
    """Shard ``index``'s VXLAN device and partitions (one per shard, made at plan time)."""

    def __init__(self, overlay: Overlay, index: int, run_id: str, state: RunState) -> None:
        self.overlay = overlay
        self.index = index
        self.run_id = run_id
        self.state = state
        tag = run_tag(run_id)
        self.device = vxlan.device_name(tag)
        self.table = f"slq-{tag}"
        self._cut = False

    @property
    def lab_host(self) -> str:
        return self.overlay.lab_hosts[self.index]

    def create(self, remote_macs: Mapping[str, str]) -> None:
        """The device, its flood entry per peer and an entry per remote guest MAC
        (``remote_macs``: MAC → the underlay address of the host it is on); up, with the
        guests' MTU, not yet on a bridge."""
        o, k = self.overlay, self.index
        netns = o.host_netns[k] if o.emulated else ""
        self.state.record("link", name=self.device)
        vxlan.create(self.device, o.vni, o.underlay[k], o.port, netns=netns)
        vxlan.apply_fdb(vxlan.fdb_lines(self.device, o.peers_of(k), remote_macs))
        host.ip_batch([f"link set {self.device} mtu {o.mtu} up"])

    def probe(self, timeout: float) -> set[str]:
        """The peer lab hosts whose probe frames arrived here (see ``vxlan.probe``)."""
        peers = [h for i, h in enumerate(self.overlay.lab_hosts) if i != self.index]
        # Frames are told apart by the run's VNI (each shard's run id is its own).
        return vxlan.probe(self.device, f"vni-{self.overlay.vni}", self.lab_host, peers,
                           timeout=timeout)

    def join(self, bridge: str) -> None:
        """The device becomes a port of ``bridge``.  The bridge answers ARP only for its
        own address: several emulated lab hosts share one kernel, whose other bridges
        would otherwise answer for it across the tunnel."""
        host.ip_batch([f"link set {self.device} master {bridge}"])
        Path(f"/proc/sys/net/ipv4/conf/{bridge}/arp_ignore").write_text("1\n")

    def cut(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        """Drop frames between the two groups of MACs (a partition, this host's part)."""
        if not self._cut:
            self.state.record("nft", family="bridge", table=self.table)
        nft.apply(f"table bridge {self.table}\ndelete table bridge {self.table}\n"
                  + nft.partition_ruleset(self.table, side_a, side_b, by_mac=True))
        self._cut = True

    def mend(self) -> None:
        if self._cut:
            nft.delete_table("bridge", self.table)
            self._cut = False

    def counters(self) -> dict[str, int]:
        """The device's packet and byte counters (what crossed the tunnel)."""
        out = {}
        for key in ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes"):
            out[key] = int(Path(f"/sys/class/net/{self.device}/statistics/{key}").read_text())
        return out
