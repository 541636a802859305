"""Fixed CPU work: hash a buffer ITERATIONS times and report how long it took."""

import hashlib
import json
import sys
import time

iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
buf = b"scalelab" * 128
t0 = time.perf_counter()
h = hashlib.sha256()
for _ in range(iterations):
    h.update(buf)
    buf = h.digest() * 32
elapsed = time.perf_counter() - t0
print(json.dumps({"metric": "cpu_seconds", "value": elapsed, "unit": "s"}))
print(json.dumps({"metric": "hash_rate", "value": iterations / elapsed, "unit": "op/s"}))
print(f"done {iterations} iterations, digest {h.hexdigest()[:12]}")
