"""What ``prepare`` sets up on dom0 for a run: the image bundle (copied once per build) and
an address for dom0 in the lab subnet on the bridge."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import posixpath
from collections.abc import Callable

from harness.backends.xen.bundle import BUNDLE_FILES, bundle_id, bundle_sources
from harness.backends.xen.dom0 import Dom0
from harness.errors import LabError, UserError
from harness.image.cache import Image

#: Journals one thing about to be made on dom0: (callback name, its keyword arguments).
Record = Callable[..., None]


def ensure_bundle(d: Dom0, workdir: str, image: Image, run_id: str,
                  record: Record) -> dict[str, str]:
    """The image, kernel and initramfs on dom0, copied once per build (by digest)."""
    bid = bundle_id(image)
    cache = posixpath.join(workdir, "cache")
    final = posixpath.join(cache, bid)
    files = {name: posixpath.join(final, name) for name in BUNDLE_FILES}
    if d.run(["test", "-e", posixpath.join(final, "complete")]).ok:
        return files
    partial = posixpath.join(cache, f".partial-{bid}-{run_id}")
    record("remove_path", path=partial)
    d.check(["mkdir", "-p", partial], "making the image cache")
    for name, src in bundle_sources(image).items():
        d.put(src, posixpath.join(partial, name))
    # Another run may have stored the same bundle meanwhile: then ours is dropped.
    d.check(["sh", "-c", 'chmod 0444 "$1"/* && touch "$1/complete" && '
             'mv -T "$1" "$2" 2>/dev/null || rm -rf "$1"', "sh", partial, final],
            "storing the image on dom0")
    if not d.run(["test", "-e", posixpath.join(final, "complete")]).ok:
        raise LabError(f"the image did not land in {final} on dom0 {d.label}")
    return files


def _check_no_overlap(d: Dom0, subnet: ipaddress.IPv4Network, bridge: str) -> None:
    """A lab subnet that overlaps one of dom0's routes would cut dom0 off that network."""
    routes = json.loads(d.run(["ip", "-j", "-4", "route", "show"]).stdout or "[]")
    for r in routes:
        dst = r.get("dst", "")
        if dst in ("", "default") or r.get("dev") == bridge:
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.IPv4Network(dst, strict=False).overlaps(subnet):
                raise UserError(f"the lab subnet {subnet} overlaps dom0's route {dst} on "
                                f"{r.get('dev')}: choose another with --subnet")


def add_bridge_address(d: Dom0, bridge: str, have: list[str], subnet: str, cidr: str,
                       record: Record) -> str | None:
    """Give dom0 the address ``cidr`` on the bridge, unless one of ``have`` (its addresses
    there) is in the lab subnet already; returns the address added."""
    net = ipaddress.IPv4Network(subnet)
    if any(ipaddress.IPv4Interface(a).ip in net for a in have):
        return None
    _check_no_overlap(d, net, bridge)
    record("remove_address", bridge=bridge, cidr=cidr)
    d.check(["ip", "addr", "add", cidr, "dev", bridge], f"adding {cidr} to {bridge}")
    return cidr
