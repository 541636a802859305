"""Backend registry: ``--backend`` takes a scheme with options, imported only when used.

    netns                          namespaces + overlayfs + sshd (default)
    netns://?upper=disk            the same with upper layers on disk
    qemu://?memory=256M&accel=auto real VMs
    xen://local  xen://root@host:2222   Xen domUs driven through xl
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from harness.backends.base import Backend
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


def backend_class(url: BackendURL) -> type[Backend]:
    """The class of ``url``'s backend (its module imported now, not before): what it states
    about itself (``needs_vm_image``, ``requires_root``) without making one."""
    module_name, _, cls_name = BACKENDS[url.scheme].rpartition(".")
    cls: type[Backend] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def load_backend(url: BackendURL) -> Backend:
    cls = backend_class(url)
    options = dict(url.options)
    if url.host:
        options["host"] = url.host
    if url.user:
        options["user"] = url.user
    if url.port:
        options["port"] = str(url.port)
    backend: Backend = cls(options)
    return backend
