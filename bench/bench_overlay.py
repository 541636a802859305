"""Lab network benchmark: guest-to-guest TCP throughput and latency on one lab host (one
bridge) against across the VXLAN tunnel (two emulated lab hosts of ``--cluster=local:2``).

One lab of 4 guests over 2 lab hosts; for each of REPEAT rounds, alternately on the pair of
one host and the pair across the tunnel: a bulk transfer of MIB MiB (throughput as the
receiver counts it) and ROUNDS request/response round trips of 64 bytes (the median).
Prints a Markdown table of medians over the rounds and the across/one-host ratios.

    python bench/bench_overlay.py [--repeat 5] [--mib 64] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from benchlib import header, log, md_table, median

from harness.cluster.lab import ClusterLab
from harness.config import build_config
from harness.preflight import preflight_lab
from harness.session import Session

PROJECT = Path(__file__).resolve().parent.parent
PORT = 5301

GUEST = r"""
import socket, sys, time, statistics
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "sink":  # count bytes of one bulk connection, then answer ping-pongs
    srv = socket.create_server(("", port)); srv.settimeout(60)
    c, _ = srv.accept(); n = 0; t0 = None
    while (b := c.recv(1 << 18)):
        t0 = t0 or time.perf_counter(); n += len(b)
    print(n / (time.perf_counter() - t0))
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := c.recv(64)):
        c.sendall(b)
else:
    host, size, rounds = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    for _ in range(100):
        try:
            s = socket.create_connection((host, port), timeout=5); break
        except OSError:
            time.sleep(0.05)
    buf = b"x" * (1 << 18)
    left = size
    while left > 0:
        left -= s.send(buf[:left])
    s.close()
    time.sleep(0.2)
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trips = []
    for _ in range(rounds):
        t = time.perf_counter(); s.sendall(b"p" * 64); got = 0
        while got < 64:
            got += len(s.recv(64))
        trips.append(time.perf_counter() - t)
    print(statistics.median(trips))
"""


def measure(lab: ClusterLab, src: str, dst: str, mib: int, rounds: int) -> tuple[float, float]:
    """(throughput B/s, median round trip s) from guest ``src`` to guest ``dst``."""
    fleet = lab.require_fleet()
    put = f"cat > /tmp/bench_net.py <<'EOF'\n{GUEST}\nEOF\n"
    address = fleet.guests[dst].spec.address
    out: dict[str, str] = {}

    def sink() -> None:
        res = fleet.run(put + f"python3 /tmp/bench_net.py sink {PORT}", names=[dst],
                        timeout=120)[dst]
        out["sink"] = res.stdout if res.exit_status == 0 else f"failed: {res.stderr}"

    t = threading.Thread(target=sink)
    t.start()
    res = fleet.run(put + f"python3 /tmp/bench_net.py send {PORT} {address} {mib << 20} "
                    f"{rounds}", names=[src], timeout=120)[src]
    t.join()
    if res.exit_status != 0 or out["sink"].startswith("failed"):
        raise RuntimeError(f"{src} → {dst}: {res.stderr} {out['sink']}")
    return float(out["sink"].split()[0]), float(res.stdout.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    top = header("Lab network: one lab host vs across the VXLAN tunnel", args.repeat,
                 f"{args.mib} MiB bulk TCP, {args.rounds} round trips of 64 B")
    with tempfile.TemporaryDirectory(prefix="bench-overlay-") as reports:
        cfg = build_config({"guests": "4", "reports_dir": reports, "cluster": "local:2"},
                           PROJECT)
        s = Session(cfg, image=preflight_lab(cfg, 4))
        try:
            lab = s.lab_up(4)
            assert isinstance(lab, ClusterLab) and lab.overlay is not None
            (a0, a1), (b0, _) = [h.names for h in lab.shards]
            paths = {"one lab host (bridge)": (a0, a1), "across the tunnel": (a1, b0)}
            got: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
            for i in range(args.repeat):
                for name, (src, dst) in paths.items():
                    got[name].append(measure(lab, src, dst, args.mib, args.rounds))
                    log(f"round {i + 1}: {name}: {got[name][-1]}")
            mtu = lab.overlay.mtu
        finally:
            s.finish(render=False)
    rows = []
    for name, values in got.items():
        rows.append([name, f"{median([v[0] for v in values]) * 8 / 1e9:.2f}",
                     f"{median([v[1] for v in values]) * 1e6:.0f}"])
    one, across = (got[p] for p in paths)
    ratio_bw = median([x[0] / y[0] for x, y in zip(across, one, strict=True)])
    ratio_rtt = median([x[1] / y[1] for x, y in zip(across, one, strict=True)])
    print(top)
    print(md_table(["path", "throughput (Gbit/s)", "round trip (µs)"], rows, "lrr"))
    print(f"\nAcross/one host, same-round ratios (median): throughput ×{ratio_bw:.2f}, "
          f"round trip ×{ratio_rtt:.2f}; guests' MTU {mtu}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
