"""The image a configuration asks for: a cached one by key or path, or the recipe's (built
now when it is not cached yet)."""

from __future__ import annotations

from collections.abc import Callable

from harness.config import LabConfig
from harness.image import cache
from harness.image.build import build


def ensure_image(config: LabConfig, progress: Callable[[str], None] | None = None,
                 vm: bool = False) -> cache.Image:
    """The image the config names, or the recipe's image (built now if not cached); ``vm``
    adds a kernel and an initramfs (what ``Backend.needs_vm_image`` asks for)."""
    if config.image:
        image = cache.resolve(config.image)
    else:
        recipe = config.recipe_spec
        if vm:
            recipe = recipe.with_vm()
        image, _ = build(recipe, progress=progress)
    image.check()
    return image
