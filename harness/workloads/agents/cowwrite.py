"""Writes into the guest's copy-on-write layer: COUNT files of SIZE bytes, each fsync'ed."""

import json
import os
import sys
import time

count = int(sys.argv[1]) if len(sys.argv) > 1 else 16
size = int(sys.argv[2]) if len(sys.argv) > 2 else 65536
target = sys.argv[3] if len(sys.argv) > 3 else "/var/tmp/scalelab-cow"
os.makedirs(target, exist_ok=True)
data = os.urandom(size)
t_all = time.perf_counter()
for i in range(count):
    t0 = time.perf_counter()
    fd = os.open(f"{target}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    print(json.dumps({"metric": "write_latency", "value": time.perf_counter() - t0, "unit": "s",
                      "t": time.time()}))
total = time.perf_counter() - t_all
print(json.dumps({"metric": "write_throughput", "value": count * size / total, "unit": "B/s"}))
