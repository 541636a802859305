"""Client/server load.  `serve PORT` answers small requests; `load HOST PORT REQUESTS`
sends REQUESTS requests, one connection each, and reports the latency of every request."""

import json
import socket
import socketserver
import sys
import time


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(b"pong " + line)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def load(host: str, port: int, requests: int) -> None:
    failures = 0
    t_all = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(f"ping {i}\n".encode())
                s.recv(64)
        except OSError:
            failures += 1
            continue
        print(json.dumps({"metric": "request_latency", "value": time.perf_counter() - t0,
                          "unit": "s", "t": time.time()}))
    total = time.perf_counter() - t_all
    print(json.dumps({"metric": "request_rate", "value": (requests - failures) / total,
                      "unit": "req/s"}))
    print(json.dumps({"metric": "request_failures", "value": failures, "unit": "req"}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        with Server(("0.0.0.0", int(sys.argv[2])), Handler) as srv:
            print("listening", flush=True)
            srv.serve_forever()
    else:
        load(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
