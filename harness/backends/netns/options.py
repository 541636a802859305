"""The ``netns://?k=v&...`` options, parsed and checked once into a frozen ``NetnsOptions``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import UserError

Upper = Literal["tmpfs", "disk"]
KNOWN = ("upper", "upper_dir", "bridge", "ports_per_bridge")
#: A Linux bridge takes at most 1023 ports; beyond this many guests per bridge, further
#: guests go on segment bridges joined to the lab bridge by a veth pair (one L2 network).
PORTS_PER_BRIDGE = 1000


@dataclass(frozen=True)
class NetnsOptions:
    #: Where the guests' copy-on-write layers live: one tmpfs for the run, or a directory.
    upper: Upper = "tmpfs"
    #: With ``upper=disk``: the directory under which the run's layers are made.
    upper_dir: Path = Path("/var/lib/scalelab")
    #: The lab bridge's name (default: ``slb-<run tag>``); it must not exist yet.
    bridge: str | None = None
    #: Guests per bridge before the next segment bridge (fewer only to try segments small).
    ports_per_bridge: int = PORTS_PER_BRIDGE

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> NetnsOptions:
        unknown = sorted(set(options) - set(KNOWN))
        if unknown:
            raise UserError(f"netns option {unknown[0]}={options[unknown[0]]!r} is not one "
                            f"of {', '.join(KNOWN)}")
        upper = options.get("upper", "tmpfs")
        if upper not in ("tmpfs", "disk"):
            raise UserError(f"netns option upper={upper!r}: use upper=tmpfs or upper=disk")
        ports = options.get("ports_per_bridge", str(PORTS_PER_BRIDGE))
        if not ports.isdigit() or not 1 <= int(ports) <= PORTS_PER_BRIDGE:
            raise UserError(f"netns option ports_per_bridge={ports!r}: use a whole number "
                            f"from 1 to {PORTS_PER_BRIDGE}")
        return cls(upper="disk" if upper == "disk" else "tmpfs",
                   upper_dir=Path(options.get("upper_dir") or "/var/lib/scalelab"),
                   bridge=options.get("bridge") or None, ports_per_bridge=int(ports))
