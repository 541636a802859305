"""What goes into a base image, and the cache key that names the result.

A recipe is read from ``[tool.scalelab.image]`` in pyproject.toml or from a TOML file given
with ``--recipe``::

    suite = "bookworm"
    variant = "minbase"
    packages = ["nginx", "wrk"]
    steps = ["echo hello > /etc/motd"]
    services = ["nginx -g 'daemon off;'"]
    vm = false

    [[files]]
    src = "agent/"          # relative to the recipe file
    dest = "/opt/agent"
    mode = "0755"
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError

#: Bumped whenever the build itself changes in a way that changes the image.
BUILDER_VERSION = 3
#: What every image carries: the guest's service and the tools the harness uses inside.
BASE_PACKAGES = ("openssh-server", "python3", "iproute2")
#: Added for images that boot as VMs (qemu, xen): a kernel and the initramfs tools.
VM_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "e2fsprogs", "busybox", "systemd")


@dataclass(frozen=True)
class FileCopy:
    src: Path
    dest: str
    mode: int | None = None


@dataclass(frozen=True)
class Recipe:
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    files: tuple[FileCopy, ...] = ()
    steps: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    vm: bool = False
    mirror: str | None = None
    name: str = "default"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def all_packages(self) -> list[str]:
        pkgs = list(BASE_PACKAGES) + list(self.packages)
        if self.vm:
            pkgs += VM_PACKAGES
        return sorted(set(pkgs))

    def with_vm(self, vm: bool = True) -> Recipe:
        return Recipe(**{**self.__dict__, "vm": vm})

    def with_mirror(self, mirror: str) -> Recipe:
        return Recipe(**{**self.__dict__, "mirror": mirror})

    def key(self) -> str:
        """A hash of everything that changes the built image."""
        h = hashlib.sha256()
        desc = {
            "builder": BUILDER_VERSION,
            "suite": self.suite,
            "variant": self.variant,
            "packages": self.all_packages(),
            "steps": list(self.steps),
            "services": list(self.services),
            "vm": self.vm,
            "mirror": self.mirror,
            "files": [(f.dest, f.mode) for f in self.files],
        }
        h.update(json.dumps(desc, sort_keys=True).encode())
        for f in self.files:
            _hash_tree(h, f.src)
        if self.vm:
            # The initramfs hook and the guest's init are part of every VM image.
            _hash_tree(h, Path(__file__).parent / "initramfs")
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = [
            {"src": str(f.src), "dest": f.dest, "mode": f.mode} for f in self.files
        ]
        d.pop("extra", None)
        return d


def _hash_tree(h: Any, path: Path) -> None:
    """Feed a file's or directory's names, modes and contents into ``h``."""
    if not path.exists():
        raise UserError(f"recipe file {path} does not exist")
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    for p in entries:
        rel = p.name if p == path else str(p.relative_to(path))
        st = p.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)


def _str_list(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def recipe_from_table(table: dict[str, Any], base_dir: Path, where: str) -> Recipe:
    """Build a recipe from a TOML table; file paths are relative to ``base_dir``."""
    known = {"suite", "variant", "packages", "files", "steps", "services", "vm", "mirror", "name"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{where}: unknown recipe key(s) {', '.join(unknown)}")
    files = []
    for i, entry in enumerate(table.get("files", [])):
        if not isinstance(entry, dict) or "src" not in entry or "dest" not in entry:
            raise UserError(f"{where}: files[{i}] needs 'src' and 'dest'")
        src = (base_dir / str(entry["src"])).resolve()
        if not src.exists():
            raise UserError(f"{where}: files[{i}] source {src} does not exist")
        dest = str(entry["dest"])
        if not dest.startswith("/"):
            raise UserError(f"{where}: files[{i}] dest {dest!r} must be an absolute path")
        mode = entry.get("mode")
        try:
            mode_int = int(str(mode), 8) if mode is not None else None
        except ValueError:
            raise UserError(f"{where}: files[{i}] mode {mode!r} is not octal") from None
        files.append(FileCopy(src, dest, mode_int))
    for key in ("suite", "variant", "name"):
        if key in table and not isinstance(table[key], str):
            raise UserError(f"{where}: '{key}' must be a string")
    return Recipe(
        suite=table.get("suite", "bookworm"),
        variant=table.get("variant", "minbase"),
        packages=_str_list(table, "packages", where),
        files=tuple(files),
        steps=_str_list(table, "steps", where),
        services=_str_list(table, "services", where),
        vm=bool(table.get("vm", False)),
        mirror=table.get("mirror"),
        name=str(table.get("name", "default")),
    )


def load_recipe(path: Path | None, project_dir: Path | None = None) -> Recipe:
    """The recipe from ``path`` (a TOML file), else pyproject's table, else the default."""
    if path is not None:
        if not path.is_file():
            raise UserError(f"recipe {path} does not exist")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"recipe {path} is not valid TOML: {exc}") from None
        return recipe_from_table(table, path.parent.resolve(), str(path))
    if project_dir is not None:
        pyproject = project_dir / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise UserError(f"{pyproject} is not valid TOML: {exc}") from None
            table = data.get("tool", {}).get("scalelab", {}).get("image")
            if isinstance(table, dict):
                where = f"{pyproject} [tool.scalelab.image]"
                return recipe_from_table(table, project_dir.resolve(), where)
    return Recipe()
