"""Sizes as people write them (``256M``, ``1G``, ``1048576``), parsed in one place."""

from __future__ import annotations

from harness.errors import UserError

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str = "size") -> int:
    """'256M' / '1G' / '64KiB' / '1048576' → bytes; anything else is a UserError naming
    ``what``."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = int(float(t[:-1]) * _UNITS[t[-1]]) if t and t[-1] in _UNITS else int(t)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a size like 256M or 1G") from None
    if value < 0:
        raise UserError(f"{what} {text!r} is negative")
    return value
