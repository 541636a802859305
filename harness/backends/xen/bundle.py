"""The image bundle (shared image, kernel, initramfs) as dom0 keeps it: one directory per
build."""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.image.build import sha256_file
from harness.image.cache import Image

BUNDLE_FILES = ("base.img", "vmlinuz", "initrd.img")


def bundle_id(image: Image) -> str:
    """Names the image + kernel + initramfs on dom0: a new build gets a new directory."""
    h = hashlib.sha256(image.digest.encode())
    for p in (image.kernel, image.initrd):
        h.update(sha256_file(p).removeprefix("sha256:").encode())
    return h.hexdigest()[:24]


def bundle_sources(image: Image) -> dict[str, Path]:
    return dict(zip(BUNDLE_FILES, (image.path, image.kernel, image.initrd), strict=True))
