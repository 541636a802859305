"""What ``xl`` says about dom0's domains: names and domids, state rows, and whether a domU
of this run still exists (asked at most once per interval, however many guests wait)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from harness.backends.xen.dom0 import SHORT_TIMEOUT, Dom0
from harness.errors import LabError

#: Seconds between two ``xl list`` asked on behalf of ``dead()``: the readiness wait asks
#: before each retry of every guest, and dom0 (nested, under TCG) must not be hammered.
WATCH_INTERVAL = 5.0


def parse_xl_list_long(text: str) -> dict[str, int]:
    """``xl list -l`` JSON → domain name → domid."""
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise LabError(f"xl list -l did not print JSON: {exc}") from None
    out = {}
    for entry in data if isinstance(data, list) else []:
        name = entry.get("config", {}).get("c_info", {}).get("name")
        if name is not None and entry.get("domid") is not None:
            out[str(name)] = int(entry["domid"])
    return out


def parse_xl_list(text: str) -> dict[str, list[str]]:
    """``xl list``'s table → domain name → its columns (name, id, MiB, vcpus, state, time)."""
    rows = {}
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 6:
            rows[cols[0]] = cols
    return rows


def domain_ids(d: Dom0) -> dict[str, int]:
    """Domain name → domid of every domain dom0 runs (from ``xl list -l``, JSON)."""
    res = d.run(["xl", "list", "-l"], timeout=SHORT_TIMEOUT)
    if not res.ok:
        raise LabError(f"xl list -l on dom0 {d.label}: {res.message()}")
    return parse_xl_list_long(res.stdout)


def xl_list(d: Dom0) -> dict[str, list[str]]:
    """``xl list`` rows by domain name (a LabError if dom0 does not answer)."""
    return parse_xl_list(d.check(["xl", "list"], "xl list"))


class DomainWatch:
    """Which domains dom0 runs, from one ``xl list`` shared by every caller for
    ``interval`` seconds.  While one caller asks dom0 the others use what is known, so a
    slow dom0 never holds up the readiness threads."""

    def __init__(self, d: Dom0, interval: float = WATCH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.d, self.interval, self.clock = d, interval, clock
        self._lock = threading.Lock()
        self._asking = False
        self._names: frozenset[str] | None = None
        self._asked_at: float | None = None  # when the listing in _names was asked for

    def gone(self, name: str, since: float) -> bool:
        """Whether domain ``name`` is missing from a listing asked for after ``since`` (a
        ``clock()`` time: when it was created).  False when unsure: no such listing yet, or
        dom0 did not answer."""
        self._refresh()
        with self._lock:
            names, asked_at = self._names, self._asked_at
        return names is not None and asked_at is not None and asked_at >= since \
            and name not in names

    def _refresh(self) -> None:
        with self._lock:
            fresh = self._asked_at is not None and self.clock() - self._asked_at < self.interval
            if fresh or self._asking:
                return
            self._asking = True
        asked_at = self.clock()
        names: frozenset[str] | None = None
        try:
            res = self.d.run(["xl", "list"], timeout=SHORT_TIMEOUT)
            # A failed listing says nothing about the domains: unsure, not dead.
            names = frozenset(parse_xl_list(res.stdout)) if res.ok else None
        finally:
            with self._lock:
                self._asking = False
                self._names, self._asked_at = names, asked_at
