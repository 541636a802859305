"""What a lab host says of itself before a cluster lab is planned: its machine id (to tell
lab hosts on one machine), hostname, memory, routes, the image it has and its SSH host key."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.identity import host_routes
from harness.image import cache
from harness.plumbing import vxlan


def machine_id() -> str:
    """This host's /etc/machine-id (its hostname when there is none)."""
    try:
        return Path("/etc/machine-id").read_text().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()


def host_facts(image_key: str, digest: str | None) -> dict[str, Any]:
    """What the client must know about a lab host before placing a shard on it.

    Run on each worker by ``client.run``: hostname, machine-id, effective uid, routes, the
    lab host's own SSH host key (for ProxyJump) and whether the image is there.
    """
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "machine_id": machine_id(),
        "euid": os.geteuid(),
        "routes": [str(r) for r in host_routes()],
        "ssh_host_key": _ssh_host_key(),
        # For the lab network: the underlay address asked for, and every address's MTU.
        "underlay": os.environ.get("SCALELAB_UNDERLAY", ""),
        "addresses": vxlan.interface_mtus(),
        "image": None,
        "image_error": None,
    }
    try:
        image = cache.resolve(image_key)
        image.check()
        if digest and image.digest != digest:
            raise UserError(f"image {image_key} here is {image.digest[:19]}…, not {digest[:19]}…")
        facts["image"] = {"key": image.key, "digest": image.digest, "manifest": image.manifest}
    except (UserError, OSError) as err:
        facts["image_error"] = str(err)
    return facts


def _ssh_host_key() -> str | None:
    try:
        return " ".join(Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])
    except OSError:
        return None


# -- the shard's lab -----------------------------------------------------------------------
