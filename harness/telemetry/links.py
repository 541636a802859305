"""A guest's traffic, from the counters of the host end of its link (veth or tap): what the
host end receives the guest sent, and the other way round."""

from __future__ import annotations

from pathlib import Path

from harness.telemetry.sample import Sample

SYS_NET = Path("/sys/class/net")
#: host-end counter → the guest's view of it.
_GUEST_VIEW = {
    "rx_bytes": "net_tx_bytes", "tx_bytes": "net_rx_bytes",
    "rx_packets": "net_tx_packets", "tx_packets": "net_rx_packets",
}


def link_samples(guest: str, dev: str) -> list[Sample]:
    """Bytes and packets each way, and drops, of the guest behind host device ``dev``."""
    stats = SYS_NET / dev / "statistics"
    out = []
    try:
        for counter, resource in _GUEST_VIEW.items():
            value = float((stats / counter).read_text())
            out.append(Sample(guest, resource, value, "B" if "bytes" in counter else "",
                              "counter"))
        drops = sum(int((stats / c).read_text()) for c in ("rx_dropped", "tx_dropped"))
        out.append(Sample(guest, "net_drops", float(drops), "", "counter"))
    except (OSError, ValueError):
        return out  # the link is gone (the guest was taken down)
    return out
