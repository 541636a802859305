"""Roles: named groups of a scenario's guests, as EnOSlib has them.

A scenario says what it needs — ``@pytest.mark.roles(server=1, clients="rest")`` — or a
whole lab is given roles with ``--roles server=1,clients=rest``; the guests are dealt out in
the lab's order, each role taking its count in the order the roles are written.  Counts:

* a whole number ``k >= 1``: the next ``k`` guests;
* a share ``"P%"``: the next P % of the guests, rounded down, at least one (half the
  guests receive, the rest send);
* ``"rest"``: every guest the other roles left (at least one; one ``rest`` per spec);
* ``"all"``: every guest, in addition to its other role (a monitor on each guest, say).

The spec is parsed once (``RoleSpec``), dealt out over a concrete list of guests into a
``Roles`` value, and that value travels: the fleet's ``role()``, ``agents.run(role=...)``,
the ``role`` column of every row and the inventory's ``role_<name>`` groups all read it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harness.errors import UserError

REST = "rest"
ALL = "all"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")


class RolesDontFit(UserError):
    """The spec needs more guests than the lab (or this N of a sweep) has."""


class UnknownRole(UserError, KeyError):
    """A scenario asked for a role its spec does not name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class RoleSpec:
    """Role name → count (an int, ``"P%"``, ``"rest"`` or ``"all"``), in written order."""

    counts: tuple[tuple[str, int | str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> RoleSpec:
        """``"server=1,clients=rest"`` (the ``--roles`` option and ``scalelab up``)."""
        pairs: list[tuple[str, object]] = []
        for part in (p.strip() for p in text.split(",")):
            name, eq, count = part.partition("=")
            if not eq:
                raise UserError(f"--roles={text!r}: {part!r} is not NAME=COUNT "
                                "(e.g. server=1,clients=rest)")
            pairs.append((name.strip(), count.strip()))
        return cls.of(pairs, where=f"--roles={text!r}")

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, object]], where: str = "roles") -> RoleSpec:
        """Checked pairs (a marker's keyword arguments, or parsed text)."""
        counts: list[tuple[str, int | str]] = []
        for name, raw in pairs:
            if not _NAME.match(name):
                raise UserError(f"{where}: role name {name!r} must start with a letter and "
                                "hold only letters, digits and _")
            if any(name == seen for seen, _ in counts):
                raise UserError(f"{where}: role {name!r} is named twice")
            counts.append((name, _count(raw, name, where)))
        if not counts:
            raise UserError(f"{where}: name at least one role, e.g. server=1,clients=rest")
        if sum(1 for _, c in counts if c == REST) > 1:
            raise UserError(f"{where}: only one role can take the rest of the guests")
        return cls(tuple(counts))

    @property
    def minimum(self) -> int:
        """The fewest guests this spec fits: its counts, one per share and one for ``rest``."""
        need = sum(c if isinstance(c, int) else int(c not in (REST, ALL))
                   for _, c in self.counts)
        return need + (1 if any(c == REST for _, c in self.counts) else 0) or 1

    def sizes(self, n: int) -> dict[str, int]:
        """How many of ``n`` guests each role takes (``all`` roles: every one)."""
        out = {name: c if isinstance(c, int) else max(1, int(n * float(c[:-1]) / 100))
               for name, c in self.counts if c not in (REST, ALL)}
        taken = sum(out.values())
        for name, c in self.counts:
            if c == REST:
                out[name] = n - taken
            elif c == ALL:
                out[name] = n
        return out

    def describe(self) -> str:
        return ",".join(f"{name}={count}" for name, count in self.counts)

    def assign(self, names: Iterable[str]) -> Roles:
        """Deal ``names`` (in order) out to the roles; RolesDontFit when there are too few."""
        order = list(names)
        if len(order) < self.minimum:
            raise RolesDontFit(f"roles {self.describe()} need at least {self.minimum} "
                               f"guest(s); there are {len(order)}")
        sizes = self.sizes(len(order))
        dealt = sum(k for name, k in sizes.items() if dict(self.counts)[name] != ALL)
        if dealt > len(order) or any(k < 1 for k in sizes.values()):
            raise RolesDontFit(f"roles {self.describe()} do not fit {len(order)} guest(s)")
        # Guests beyond the counts, when no role takes the rest, simply have no role.
        members: dict[str, tuple[str, ...]] = {}
        nxt = 0
        for name, count in self.counts:
            if count == ALL:
                members[name] = tuple(order)
                continue
            members[name] = tuple(order[nxt:nxt + sizes[name]])
            nxt += sizes[name]
        return Roles(members)


def _count(raw: object, name: str, where: str) -> int | str:
    if isinstance(raw, bool):  # True is an int to Python, not a count to a reader
        raise UserError(f"{where}: {name}={raw!r} is not a count")
    if isinstance(raw, int):
        if raw < 1:
            raise UserError(f"{where}: {name}={raw} must be at least 1 (or rest, or all)")
        return raw
    text = str(raw).strip().lower()
    if text in (REST, ALL):
        return text
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise UserError(f"{where}: {name}={raw!r}: a share must be above 0 % and at "
                            "most 100 %")
        return f"{share:g}%"
    try:
        return _count(int(text), name, where)
    except ValueError:
        raise UserError(f"{where}: {name}={raw!r} is not a count: give a number, a "
                        "share like 50%, rest or all") from None


@dataclass(frozen=True)
class Roles:
    """Role → its guests, dealt out for one scenario (or one lab)."""

    members_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.members_of)

    def members(self, role: str) -> tuple[str, ...]:
        if role not in self.members_of:
            known = ", ".join(self.members_of) or "none (give @pytest.mark.roles or --roles)"
            raise UnknownRole(f"no role {role!r} here; the roles are {known}")
        return self.members_of[role]

    def of(self, guest: str) -> tuple[str, ...]:
        return tuple(r for r, names in self.members_of.items() if guest in names)

    def labels(self) -> dict[str, str]:
        """guest → its roles joined with ``+`` (the rows' ``role`` column)."""
        out: dict[str, list[str]] = {}
        for role, names in self.members_of.items():
            for n in names:
                out.setdefault(n, []).append(role)
        return {n: "+".join(rs) for n, rs in out.items()}

    def restricted(self, names: Iterable[str]) -> Roles:
        """The same roles over only ``names`` (a fleet's subset keeps its roles)."""
        keep = set(names)
        return Roles({r: tuple(n for n in ns if n in keep) for r, ns in self.members_of.items()})

    def merged(self, other: Roles) -> Roles:
        """Each role's guests from both, in first-seen order (a lab's roles over its run)."""
        out = {r: list(ns) for r, ns in self.members_of.items()}
        for r, ns in other.members_of.items():
            have = out.setdefault(r, [])
            have += [n for n in ns if n not in have]
        return Roles({r: tuple(ns) for r, ns in out.items()})
