"""Guest-to-guest TCP transfer.  `serve PORT` receives until EOF; `send HOST PORT BYTES` sends.

The sender reports the throughput it saw; the server prints one line per connection.
"""

import json
import socket
import sys
import time

CHUNK = b"\0" * 65536


def serve(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(256)
    print("listening", flush=True)
    while True:
        conn, addr = srv.accept()
        got = 0
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            got += len(data)
        conn.sendall(b"ok")
        conn.close()
        print(f"received {got} bytes from {addr[0]}", flush=True)


def send(host: str, port: int, nbytes: int) -> None:
    t0 = time.perf_counter()
    s = socket.create_connection((host, port), timeout=60)
    sent = 0
    while sent < nbytes:
        n = min(len(CHUNK), nbytes - sent)
        s.sendall(CHUNK[:n])
        sent += n
    s.shutdown(socket.SHUT_WR)
    s.recv(2)
    s.close()
    elapsed = time.perf_counter() - t0
    print(json.dumps({"metric": "transfer_seconds", "value": elapsed, "unit": "s"}))
    print(json.dumps({"metric": "transfer_throughput", "value": sent / elapsed, "unit": "B/s"}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
