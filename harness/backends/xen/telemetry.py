"""What xen domUs spend, read on dom0 over the connection the backend already holds, with
no agent in the guests: one shell command per sampling round.

* ``xl list``: each domain's CPU seconds (its ``Time(s)`` column, all vCPUs) and the memory
  Xen gives it. A PV domU's memory *in use* is not visible from dom0 without a balloon
  driver's help, so ``memory_bytes`` here is the allocation — a ceiling, not a level.
* ``/proc/net/dev`` on dom0: the counters of each domU's back-end vif (``vif<domid>.0``),
  the same host-end view netns and qemu sample.
* blkback's counters on dom0 (``/sys/bus/xen-backend/devices/vbd-<domid>-<dev>/
  statistics``): each domU's virtual block devices' sectors read and written, as bytes — what
  ``xentop`` shows, read without it (xentop cuts names to 10 characters unless ``-f``, costs a
  process more and is not needed for two integers). A disk served by QEMU's qdisk has none.

Processes inside a domU cannot be counted from dom0; that series is absent for xen.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.backends.base import Guest
from harness.backends.xen.dom0 import Dom0
from harness.backends.xen.xl import parse_xl_list
from harness.telemetry.links import link_samples, read_net_dev
from harness.telemetry.sample import Sample

NET_MARK, VBD_MARK = "@@scalelab-net", "@@scalelab-vbd"
VBD_GLOB = "/sys/bus/xen-backend/devices/vbd-*"
ROUND = (f"xl list; echo {NET_MARK}; cat /proc/net/dev; echo {VBD_MARK}; "
         f"for d in {VBD_GLOB}; do [ -d \"$d/statistics\" ] && "
         # unquoted $(…): the two files' lines become one line of words
         "echo \"${d##*/}\" $(cat \"$d/statistics/rd_sect\" \"$d/statistics/wr_sect\"); "
         "done; true")
SECTOR = 512


def parse_vbd_stats(text: str) -> dict[int, tuple[int, int]]:
    """``vbd-<domid>-<dev> <rd_sect> <wr_sect>`` lines → domid → sectors read, written
    (summed over the domain's devices)."""
    out: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        cols = line.split()
        parts = cols[0].split("-") if cols else []
        if len(cols) != 3 or len(parts) != 3 or parts[0] != "vbd":
            continue
        try:
            domid, read, written = int(parts[1]), int(cols[1]), int(cols[2])
        except ValueError:
            continue
        r0, w0 = out.get(domid, (0, 0))
        out[domid] = (r0 + read, w0 + written)
    return out


def domu_samples(text: str, guests: Sequence[Guest]) -> list[Sample]:
    """One round's output (``ROUND``) → the guests' samples. A guest whose domain has left
    ``xl list`` (killed, destroyed) gets none."""
    xl_part, _, rest = text.partition(NET_MARK)
    net_part, _, vbd_part = rest.partition(VBD_MARK)
    rows = parse_xl_list(xl_part.strip())
    links = read_net_dev(net_part.lstrip("\n"))
    vbds = parse_vbd_stats(vbd_part)
    out: list[Sample] = []
    for g in guests:
        domain = str(g.info.get("domain", g.name))
        row = rows.get(domain)
        if row is None:
            continue
        try:
            out.append(Sample(g.name, "cpu_seconds", float(row[5]), "s", "counter"))
            out.append(Sample(g.name, "memory_bytes", float(int(row[2]) << 20), "B"))
        except (ValueError, IndexError):
            continue
        out += link_samples(g.name, f"vif{row[1]}.0", links)
        if row[1].isdigit() and int(row[1]) in vbds:
            read, written = vbds[int(row[1])]
            out.append(Sample(g.name, "disk_read_bytes", float(read * SECTOR), "B", "counter"))
            out.append(Sample(g.name, "disk_written_bytes", float(written * SECTOR), "B",
                              "counter"))
    return out


def sample_domus(d: Dom0, guests: Sequence[Guest], *, slow: bool = False) -> list[Sample]:
    """Ask dom0 once; nothing this round when it does not answer (the next round asks
    again — a slow dom0 must not stop the sampler)."""
    res = d.sh(ROUND, timeout=10.0)
    if not res.stdout:
        return []
    return domu_samples(res.stdout, guests)
