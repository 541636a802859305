"""The image cache: built images live under ``<cache>/images/<key>/`` with a manifest."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError

MANIFEST = "manifest.json"
IMAGE_FILE = "base.img"
EXT4_MAGIC_OFFSET = 1024 + 0x38


def cache_dir() -> Path:
    env = os.environ.get("SCALELAB_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/scalelab")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scalelab"


@dataclass(frozen=True)
class Image:
    """A built, cached base image (and, for VM images, its kernel and initramfs)."""

    key: str
    dir: Path
    manifest: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.dir / IMAGE_FILE

    @property
    def digest(self) -> str:
        return str(self.manifest["digest"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def vm(self) -> bool:
        return bool(self.manifest.get("recipe", {}).get("vm"))

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def services(self) -> list[str]:
        return list(self.manifest.get("recipe", {}).get("services", []))

    def check(self) -> None:
        """A cheap integrity check: the file is there, unchanged in size and mtime, ext4."""
        if not self.path.is_file():
            raise UserError(f"image {self.path} is missing: rebuild it with `scalelab image build`")
        st = self.path.stat()
        if st.st_size != self.size or int(st.st_mtime) != int(self.manifest["mtime"]):
            raise UserError(
                f"image {self.path} changed since it was built (corrupt?): "
                "rebuild it with `scalelab image build --force`"
            )
        with self.path.open("rb") as f:
            f.seek(EXT4_MAGIC_OFFSET)
            if f.read(2) != b"\x53\xef":
                raise UserError(
                    f"image {self.path} is not an ext4 image: "
                    "rebuild it with `scalelab image build --force`"
                )
        if self.vm and not (self.kernel.is_file() and self.initrd.is_file()):
            raise UserError(f"image {self.key} lacks its kernel or initramfs: rebuild with --force")

    def info(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path),
            "digest": self.digest,
            "size": self.size,
            "vm": self.vm,
            "recipe": self.manifest.get("recipe", {}).get("name", "default"),
        }


def images_root(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "images"


def load(key: str, root: Path | None = None) -> Image | None:
    d = images_root(root) / key
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return Image(key, d, manifest)


def list_images(root: Path | None = None) -> list[Image]:
    base = images_root(root)
    if not base.is_dir():
        return []
    found = [load(d.name, root) for d in sorted(base.iterdir()) if not d.name.startswith(".")]
    return sorted((i for i in found if i), key=lambda i: str(i.manifest.get("created", "")))


def resolve(spec: str, root: Path | None = None) -> Image:
    """An image named by key, key prefix, or the path of its ``base.img`` / directory."""
    p = Path(spec)
    if p.exists():
        d = p if p.is_dir() else p.parent
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"{spec} is not a scalelab image (no {MANIFEST} beside it)") from None
        return Image(d.name, d, manifest)
    matches = [i for i in list_images(root) if i.key.startswith(spec)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no cached image {spec!r}: see `scalelab image list`")
    raise UserError(f"image key {spec!r} is ambiguous: {', '.join(i.key for i in matches)}")


def remove(image: Image) -> None:
    shutil.rmtree(image.dir)
