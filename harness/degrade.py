"""Network conditions between guests (the ``degrade`` fault), parsed once at the edge.

A :class:`Degradation` is what people write (``delay="50ms", jitter="5ms", loss="1%"``)
turned into numbers: delays in seconds, loss, duplication and reordering as fractions of
packets.  A :class:`Shaping` is one degradation applied to the traffic a guest sends to some
destinations (addresses); a guest's whole set of conditions is a list of them, and an empty
list is a guest restored.  Backends get only these typed values (``CanDegrade.shape``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import UserError

_TIME = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s)?\s*$")
_SCALE = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


def parse_duration(text: str | float, what: str) -> float:
    """'100ms' / '1.5s' / '250us' / '0' → seconds; anything else is a UserError naming
    ``what`` (a bare number other than 0 is refused: its unit would be a guess)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        raise UserError(f"{what} {text!r}: give a unit, like '50ms' or '1s'")
    if str(text).strip().startswith("-"):
        raise UserError(f"{what} {text!r} is negative")
    m = _TIME.match(str(text))
    if m is None or (m.group(2) is None and float(m.group(1)) != 0):
        raise UserError(f"{what} {text!r} is not a duration like 50ms, 1.5s or 250us")
    return float(m.group(1)) * _SCALE[m.group(2) or "s"]


def parse_percent(text: str | float, what: str) -> float:
    """'1%' / '0.5%' / '0' → a fraction in [0, 1]; anything else is a UserError."""
    if str(text).strip().startswith("-"):
        raise UserError(f"{what} {text!r} is negative")
    m = _PERCENT.match(str(text))
    if m is None and str(text).strip() not in ("0", "0.0"):
        raise UserError(f"{what} {text!r} is not a percentage like 1% or 0.5%")
    value = float(m.group(1)) / 100 if m else 0.0
    if value > 1:
        raise UserError(f"{what} {text!r} is more than 100%")
    return value


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:g}ms"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


@dataclass(frozen=True)
class Degradation:
    """Delay and jitter in seconds; loss, duplication and reordering as fractions."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0

    @classmethod
    def parse(cls, *, delay: str = "0", jitter: str = "0", loss: str = "0",
              duplicate: str = "0", reorder: str = "0") -> Degradation:
        d = cls(parse_duration(delay, "delay"), parse_duration(jitter, "jitter"),
                parse_percent(loss, "loss"), parse_percent(duplicate, "duplicate"),
                parse_percent(reorder, "reorder"))
        if d.jitter and not d.delay:
            raise UserError("jitter needs a delay (it varies the delay: give --delay too)")
        if d.reorder and not d.delay:
            raise UserError("reorder needs a delay (reordered packets are the ones sent "
                            "without it: give --delay too)")
        if d == cls():
            raise UserError("degrade needs at least one of delay, loss, duplicate")
        return d

    @property
    def needs_netem(self) -> bool:
        """Whether it needs tc netem (delay, jitter, reordering); loss and duplication
        can also be done by nftables."""
        return bool(self.delay or self.jitter or self.reorder)

    def netem_args(self) -> list[str]:
        """The arguments of ``tc qdisc ... netem`` for all of it."""
        args: list[str] = []
        if self.delay:
            args += ["delay", _ms(self.delay)] + ([_ms(self.jitter)] if self.jitter else [])
        if self.loss:
            args += ["loss", _pct(self.loss)]
        if self.duplicate:
            args += ["duplicate", _pct(self.duplicate)]
        if self.reorder:
            args += ["reorder", _pct(self.reorder)]
        return args

    def label(self) -> str:
        """What the report's band and the fault row say: 'delay 100ms ±10ms, loss 30%'."""
        parts = []
        if self.delay:
            parts.append(f"delay {_ms(self.delay)}"
                         + (f" ±{_ms(self.jitter)}" if self.jitter else ""))
        for name, value in (("loss", self.loss), ("duplicate", self.duplicate),
                            ("reorder", self.reorder)):
            if value:
                parts.append(f"{name} {_pct(value)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Shaping:
    """One degradation of what a guest sends to ``to`` (IPv4 addresses of other guests)."""

    cond: Degradation
    to: tuple[str, ...]


def parse_spec(text: str) -> tuple[Degradation, list[str] | None]:
    """A schedule's ``degrade:delay=100ms,jitter=10ms,loss=1%,to=g001+g002`` (without the
    ``degrade:``) → the degradation and its destinations (None: every other guest)."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in ("delay", "jitter", "loss", "duplicate", "reorder", "to"):
            raise UserError(f"degrade:{text}: {part!r} is not one of delay=, jitter=, loss=, "
                            "duplicate=, reorder=, to=")
        fields[key] = value
    to = fields.pop("to", None)
    return Degradation.parse(**fields), (to.split("+") if to else None)


def destinations_label(to: list[str] | None) -> str:
    """Where a band says the degraded traffic goes: 'other guests', 'g001, g002', '9 guests'."""
    if to is None:
        return "other guests"
    return ", ".join(to) if len(to) <= 4 else f"{len(to)} guests"
