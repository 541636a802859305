"""Waiting from the guests' side until a TCP port or an HTTP URL answers."""

from __future__ import annotations

# Run by the guest's python3 (every image has it): polls until ``target`` answers or the
# deadline passes, and on failure says why in its last stderr line (the row's reason), e.g.
# "10.213.0.3:8080 did not answer within 5 s: [Errno 111] Connection refused".  The guest
# polls rather than the host: a guest's own view (its loopback, its routes) is what counts,
# and one SSH command per guest costs the same whether the wait is short or long.
WAIT_SCRIPT = """\
import socket, sys, time, urllib.error, urllib.request
kind, target, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    left = max(0.05, min(1.0, deadline - time.monotonic()))
    try:
        if kind == "port":
            host, port = target.rsplit(":", 1)
            socket.create_connection((host.strip("[]"), int(port)), timeout=left).close()
        else:
            urllib.request.urlopen(target, timeout=left).close()
        sys.exit(0)
    except urllib.error.HTTPError as e:  # it answers, but not yet with a success
        why = f"HTTP {e.code} {e.reason}"
    except (OSError, ValueError) as e:
        why = str(getattr(e, "reason", None) or e)
    if time.monotonic() >= deadline:
        sys.exit(f"{target} did not answer within {timeout:g} s: {why}")
    time.sleep(0.1)
"""
