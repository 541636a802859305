"""``cd tests && python -m xenlab [build|up]``: build the dom0 image, or boot a lab and wait."""

from __future__ import annotations

import sys
import time

from .image import build_dom0_image
from .lab import running_lab


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "build"
    if cmd == "build":
        image = build_dom0_image()
        print(image.dir)
        return 0
    if cmd == "up":
        with running_lab() as lab:
            print(f"dom0 up in {lab.timings}: {lab.backend_url()}")
            print(f"ssh -i {lab.key_path} -o UserKnownHostsFile={lab.known_hosts} "
                  f"-p {lab.port} root@127.0.0.1   (Ctrl-C stops the lab)")
            try:
                while lab.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    print("usage: python -m xenlab [build|up]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
