"""A guest's traffic, from the counters of the host end of its link (veth or tap): what the
host end receives the guest sent, and the other way round.

Every link's counters come from one read of ``/proc/net/dev`` per round, not six sysfs files
per guest: at 256 guests that is the difference between a sampler that costs a few percent of
a core and one that costs more than a tenth.
"""

from __future__ import annotations

from pathlib import Path

from harness.telemetry.sample import Sample

NET_DEV = Path("/proc/net/dev")

#: Link → (rx_bytes, rx_packets, rx_drop, tx_bytes, tx_packets, tx_drop) of its host end.
Counters = dict[str, tuple[int, int, int, int, int, int]]


def read_net_dev(text: str | None = None) -> Counters:
    """Every link of this network namespace with its counters (``/proc/net/dev``)."""
    out: Counters = {}
    for line in (NET_DEV.read_text() if text is None else text).splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        if len(f) >= 12:
            out[name.strip()] = (int(f[0]), int(f[1]), int(f[3]), int(f[8]), int(f[9]),
                                 int(f[11]))
    return out


def link_samples(guest: str, dev: str, counters: Counters) -> list[Sample]:
    """Bytes and packets each way, and drops, of the guest behind host device ``dev``
    (nothing when the link is gone: the guest was taken down)."""
    c = counters.get(dev)
    if c is None:
        return []
    rx_bytes, rx_packets, rx_drop, tx_bytes, tx_packets, tx_drop = c
    return [
        Sample(guest, "net_tx_bytes", float(rx_bytes), "B", "counter"),
        Sample(guest, "net_tx_packets", float(rx_packets), "", "counter"),
        Sample(guest, "net_rx_bytes", float(tx_bytes), "B", "counter"),
        Sample(guest, "net_rx_packets", float(tx_packets), "", "counter"),
        Sample(guest, "net_drops", float(rx_drop + tx_drop), "", "counter"),
    ]
