"""How long the xen backend takes to give up on a dom0 that cannot be reached.

    python bench/bench_dom0_connect.py [--timeouts 1,2,4] [--repeat 5]

Two dead dom0s, both on loopback so that nothing but the client's own waiting is measured:

- *refused*: a port nobody listens on (dom0 down, sshd not started): the kernel answers with
  RST at once, so giving up should cost nothing like ``connect_timeout``;
- *silent*: a port that accepts and never says a word (a hung sshd, a frozen dom0 whose
  kernel still completes handshakes): the wait for the SSH banner is bounded by
  ``connect_timeout``, so giving up should cost about that, not a multiple of it.

Each case is run ``--repeat`` times per ``connect_timeout``; the table gives the median and
the worst wall time and the median as a multiple of ``connect_timeout``.  These were
wall-clock assertions of the unit tests (tests/test_xen_config.py); on a shared 2-core host
they belong here, where the load is printed beside them.  No root, no lab: runs anywhere.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from benchlib import fmt, header, log, md_table, median

from harness.backends.xen import Target, connect, known_hosts_line
from harness.errors import UserError
from harness.identity import KeyPair
from harness.ssh import load_private_key

#: Goals: a refused port gives up in well under the timeout; a silent one within 1.5× of it.
REFUSED_MAX_FRACTION = 0.25
SILENT_MAX_RATIO = 1.5


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that was free a moment ago (bound, then closed: nobody listens)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        th.join(2)
        srv.close()
        for c in held:
            c.close()


def give_up_seconds(port: int, timeout: float, known_hosts: Path) -> tuple[float, str]:
    """Wall seconds until ``connect`` gives up on 127.0.0.1:port, and its message."""
    key = load_private_key(KeyPair.generate().private_openssh)
    known_hosts.write_text(known_hosts_line("127.0.0.1", port, key) + "\n")
    t = Target(local=False, host="127.0.0.1", port=port, known_hosts=str(known_hosts),
               connect_timeout=timeout)
    t0 = time.monotonic()
    try:
        connect(t).close()
    except UserError as err:
        return time.monotonic() - t0, str(err)
    raise RuntimeError(f"127.0.0.1:{port} answered: nothing should listen there")


#: What connect() says for each case (its message names the cause).
EXPECTED = {"refused": "refused the connection", "silent": "completed no SSH handshake"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--timeouts", default="1,2,4", help="connect_timeout values (seconds)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    timeouts = [float(x) for x in args.timeouts.split(",") if x]
    cases: dict[str, Callable[[], AbstractContextManager[int]]] = {
        "refused": refused_port, "silent": silent_port,
    }
    rows = []
    worst: dict[str, float] = {"refused": 0.0, "silent": 0.0}
    with tempfile.TemporaryDirectory(prefix="bench-dom0-") as tmp:
        kh = Path(tmp) / "known_hosts"
        for timeout in timeouts:
            for case, make in cases.items():
                times = []
                for k in range(args.repeat):
                    with make() as port:
                        secs, msg = give_up_seconds(port, timeout, kh)
                    if EXPECTED[case] not in msg:
                        raise RuntimeError(f"{case}: unexpected error: {msg}")
                    times.append(secs)
                    log(f"{case} timeout={timeout:g}s #{k + 1}: {secs:.3f}s")
                med = median(times)
                worst[case] = max(worst[case], med / timeout)
                rows.append([case, f"{timeout:g}", args.repeat, fmt(med, 3), fmt(max(times), 3),
                             fmt(med / timeout, 2)])
    head = header("Giving up on an unreachable dom0 (xen backend's connect)", args.repeat,
                  "loopback only: the client's own waiting, no network")
    # Nothing here is compared with a peer: the ratio is against connect_timeout.
    print(head.replace("; ratios are against scalelab in the same run", ""))
    print(md_table(["dom0", "connect_timeout s", "runs", "median s", "max s", "median / timeout"],
                   rows))
    ok_refused = worst["refused"] <= REFUSED_MAX_FRACTION
    ok_silent = worst["silent"] <= SILENT_MAX_RATIO
    print(f"- a refused port gives up in ≤ {REFUSED_MAX_FRACTION:g}× connect_timeout: "
          f"**{'met' if ok_refused else 'NOT met'}** (worst median {worst['refused']:.2f}×)")
    print(f"- a silent port gives up in ≤ {SILENT_MAX_RATIO:g}× connect_timeout: "
          f"**{'met' if ok_silent else 'NOT met'}** (worst median {worst['silent']:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
