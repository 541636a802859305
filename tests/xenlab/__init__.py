"""A real Xen lab for the tests: Xen + a Debian dom0 nested under QEMU TCG (see lab.py)."""

from .image import Dom0Image, build_dom0_image
from .lab import BRIDGE_SUBNET, XenLab, pinned_image, running_lab, start_lab

__all__ = ["BRIDGE_SUBNET", "Dom0Image", "XenLab", "build_dom0_image", "pinned_image",
           "running_lab", "start_lab"]
