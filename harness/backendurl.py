"""``--backend`` parsed: a scheme with options, ``scheme[://[user@]host[:port]][?k=v&...]``.

Kept apart from ``harness.backends`` (which imports every backend's contract) so that the
configuration can parse it at the edge without loading any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from harness.errors import UserError

BACKENDS = {
    "netns": "harness.backends.netns.NetnsBackend",
    "qemu": "harness.backends.qemu.QemuBackend",
    "xen": "harness.backends.xen.XenBackend",
}


@dataclass(frozen=True)
class BackendURL:
    scheme: str
    options: dict[str, str]
    user: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return self.scheme


def parse_backend(text: str) -> BackendURL:
    """Parse ``scheme[://[user@]host[:port]][?k=v&...]``; an unknown scheme is a UserError."""
    raw = text.strip()
    if "://" not in raw:
        raw = raw + "://"
    parts = urlsplit(raw)
    scheme = parts.scheme
    if scheme not in BACKENDS:
        raise UserError(
            f"unknown backend {text!r}: choose one of {', '.join(sorted(BACKENDS))}"
        )
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"backend {text!r}: the port is not a number") from None
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    return BackendURL(scheme, options, parts.username, parts.hostname, port)
