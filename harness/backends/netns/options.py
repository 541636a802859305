"""The ``netns://?k=v&...`` options, parsed and checked once into a frozen ``NetnsOptions``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import UserError

Upper = Literal["tmpfs", "disk"]
KNOWN = ("upper", "upper_dir", "bridge")


@dataclass(frozen=True)
class NetnsOptions:
    #: Where the guests' copy-on-write layers live: one tmpfs for the run, or a directory.
    upper: Upper = "tmpfs"
    #: With ``upper=disk``: the directory under which the run's layers are made.
    upper_dir: Path = Path("/var/lib/scalelab")
    #: The lab bridge's name (default: ``slb-<run tag>``); it must not exist yet.
    bridge: str | None = None

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> NetnsOptions:
        unknown = sorted(set(options) - set(KNOWN))
        if unknown:
            raise UserError(f"netns option {unknown[0]}={options[unknown[0]]!r} is not one "
                            f"of {', '.join(KNOWN)}")
        upper = options.get("upper", "tmpfs")
        if upper not in ("tmpfs", "disk"):
            raise UserError(f"netns option upper={upper!r}: use upper=tmpfs or upper=disk")
        return cls(upper="disk" if upper == "disk" else "tmpfs",
                   upper_dir=Path(options.get("upper_dir") or "/var/lib/scalelab"),
                   bridge=options.get("bridge") or None)
