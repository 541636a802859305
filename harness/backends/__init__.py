"""Backend registry: ``--backend`` takes a scheme with options, imported only when used.

    netns                          namespaces + overlayfs + sshd (default)
    netns://?upper=disk            the same with upper layers on disk
    qemu://?memory=256M&accel=auto real VMs
    xen://local  xen://root@host:2222   Xen domUs driven through xl
"""

from __future__ import annotations

import importlib

from harness.backends.base import Backend
from harness.backendurl import BACKENDS, BackendURL, parse_backend

__all__ = ["BACKENDS", "BackendURL", "backend_class", "load_backend", "parse_backend"]


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
