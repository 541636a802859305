"""``python -m harness.backends.xen record-host-key root@dom0 FILE``."""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.backends.xen.dom0 import record_host_key
from harness.image.cache import cache_dir


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.backends.xen")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record-host-key", help="pin dom0's SSH host key (run once, on purpose)")
    r.add_argument("dest", help="[user@]host[:port]")
    r.add_argument("file", nargs="?", default=str(cache_dir() / "xen_known_hosts"))
    args = p.parse_args(argv)
    line = record_host_key(args.dest, Path(args.file))
    key_type, blob = line.split()[1:3]
    fp = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode()
    print(f"recorded {key_type} SHA256:{fp.rstrip('=')} for {line.split()[0]} in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
