#!/usr/bin/env python3
"""Guest-to-guest UDP probes: loss, duplication and round-trip time, as metric lines.

    netprobe.py echo PORT                          # answer every datagram with itself
                                                   # (says "listening" once it can)
    netprobe.py probe HOST PORT COUNT INTERVAL WAIT

``probe`` sends COUNT numbered datagrams, one every INTERVAL seconds, reading answers as
they come, then waits WAIT seconds for late ones.  It prints one JSON line per metric:
``sent``, ``received`` (distinct probes answered), ``duplicates`` (answers beyond the first
for a probe), ``lost`` and the RTT's median and 90th percentile in ms; with ``--rtts`` also
every RTT (``rtt_ms``, in order of the probes).  Only the standard library: it runs on the
guests' python3.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

_FMT = "!Id"  # probe number, send time (perf_counter seconds)


def echo(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("listening", flush=True)  # what Agents.serve waits for
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def _drain(sock: socket.socket, until: float, seen: dict[int, list[float]]) -> None:
    while True:
        left = until - time.perf_counter()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return
        try:
            data = sock.recv(2048)
        except ConnectionRefusedError:  # an ICMP "port unreachable" for an earlier probe
            continue
        seq, sent = struct.unpack(_FMT, data[: struct.calcsize(_FMT)])
        seen.setdefault(seq, []).append((time.perf_counter() - sent) * 1e3)


def probe(host: str, port: int, count: int, interval: float, wait: float,
          rtts: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect((host, port))
    seen: dict[int, list[float]] = {}
    start = time.perf_counter()
    for seq in range(count):
        sock.send(struct.pack(_FMT, seq, time.perf_counter()))
        _drain(sock, start + (seq + 1) * interval, seen)
    _drain(sock, time.perf_counter() + wait, seen)
    firsts = sorted(v[0] for v in seen.values())

    def pct(q: float) -> float:
        return firsts[min(len(firsts) - 1, int(q * len(firsts)))] if firsts else float("nan")

    out = {"sent": count, "received": len(seen),
           "duplicates": sum(len(v) - 1 for v in seen.values()), "lost": count - len(seen),
           "rtt_median_ms": pct(0.5), "rtt_p90_ms": pct(0.9)}
    for metric, value in out.items():
        unit = "ms" if metric.endswith("_ms") else "packets"
        print(json.dumps({"metric": metric, "value": value, "unit": unit}))
    if rtts:
        for seq in range(count):
            if seq in seen:
                print(json.dumps({"metric": "rtt_ms", "value": seen[seq][0], "unit": "ms"}))


def main(argv: list[str]) -> None:
    if argv[:1] == ["echo"] and len(argv) == 2:
        echo(int(argv[1]))
    elif argv[:1] == ["probe"] and len(argv) in (6, 7):
        probe(argv[1], int(argv[2]), int(argv[3]), float(argv[4]), float(argv[5]),
              rtts=argv[6:] == ["--rtts"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
