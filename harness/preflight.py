"""Every check that can fail on the user's input, made before anything is created: the
backend, root, the image (built if need be), the subnet; or the cluster's checks."""

from __future__ import annotations

import os

from harness.backends import load_backend
from harness.config import LabConfig
from harness.errors import UserError
from harness.identity import choose_subnet
from harness.image import cache
from harness.image.ensure import ensure_image


def preflight_lab(config: LabConfig, n_guests: int) -> cache.Image:
    """The image the lab will use, once everything the user gave has been checked."""
    if config.cluster:
        # A lab spread over lab hosts: their checks (Dask is imported only here).
        from harness.cluster.preflight import preflight_cluster

        return preflight_cluster(config, n_guests)
    backend = load_backend(config.backend_url)
    if backend.requires_root and os.geteuid() != 0:
        raise UserError(f"the {backend.name} backend needs root (namespaces, mounts, network "
                        "devices): run as root")
    image = ensure_image(config, vm=backend.needs_vm_image)
    backend.check(image, n_guests)
    choose_subnet(config.subnet, n_guests)
    return image
