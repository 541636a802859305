"""Time zones of a report: which zone to draw in, and how to name it.

Times are stored in UTC and drawn in the reader's zone, the way the seed's rrdtool graphs honoured
``TZ``: ``--tz`` wins, then the ``TZ`` environment variable, then the host's ``/etc/localtime``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import zoneinfo
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError

#: The host's zone link; a module attribute so tests can point it elsewhere.
LOCALTIME = Path("/etc/localtime")

#: Copies of the zone database live in ``posix/`` and ``right/`` under the zoneinfo root too.
_DB_PREFIXES = ("posix/", "right/")

_LIST_HINT = (
    "valid names are the files under /usr/share/zoneinfo, e.g. Europe/Paris; list them with: "
    'python3 -c "import zoneinfo; print(sorted(zoneinfo.available_timezones()))"'
)


def zone_key_from_path(path: str | os.PathLike[str]) -> str | None:
    """``/usr/share/zoneinfo/Europe/Paris`` → ``Europe/Paris``; None if not under a zoneinfo dir."""
    text = os.fspath(path)
    marker = "/zoneinfo/"
    at = text.rfind(marker)
    if at < 0:
        return None
    key = text[at + len(marker) :]
    for prefix in _DB_PREFIXES:
        key = key.removeprefix(prefix)
    return key or None


@lru_cache(maxsize=1)
def _available() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _unknown(name: str, source: str) -> UserError:
    close = difflib.get_close_matches(name, _available(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UserError(f"unknown time zone {name!r}{source}{hint}: {_LIST_HINT}")


def _load(name: str, source: str) -> zoneinfo.ZoneInfo:
    key = name.strip().removeprefix(":")  # POSIX allows TZ=":Europe/Paris"
    if key.startswith("/"):
        key = zone_key_from_path(key) or key
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a directory such as "America"; ValueError: empty, absolute or "../" keys.
        raise _unknown(name, source) from None


def _host_zone() -> zoneinfo.ZoneInfo:
    try:
        target = os.path.realpath(LOCALTIME)
    except OSError:
        return zoneinfo.ZoneInfo("UTC")
    key = zone_key_from_path(target)
    if key is not None:
        try:
            return zoneinfo.ZoneInfo(key)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
    # A copied (not linked) /etc/localtime has no name we could print: draw in UTC instead.
    return zoneinfo.ZoneInfo("UTC")


def resolve_zone(name: str | None) -> zoneinfo.ZoneInfo:
    """The report zone: ``name``, else ``$TZ``, else ``/etc/localtime``, else UTC.

    Raises :class:`UserError` for a name the zone database does not know.
    """
    if name is not None and name.strip():
        return _load(name, "")
    env = os.environ.get("TZ", "")
    if env.strip():
        return _load(env, " (from the TZ environment variable)")
    return _host_zone()


def zone_for_run(
    tz: str | None, info: Mapping[str, Any], warnings: list[str] | None = None
) -> zoneinfo.ZoneInfo:
    """``tz`` if given, else the zone the run was reported in (``report_tz`` of run.json),
    else :func:`resolve_zone` of nothing. A bad recorded zone falls back with a warning."""
    if tz is not None and tz.strip():
        return resolve_zone(tz)
    recorded = info.get("report_tz")
    if isinstance(recorded, str) and recorded.strip():
        try:
            return resolve_zone(recorded)
        except UserError:
            if warnings is not None:
                warnings.append(f"run.json names an unknown zone {recorded!r}; using the host's")
    return resolve_zone(None)


def offset_text(offset: dt.timedelta | None) -> str:
    """``UTC−06:00`` (a real minus sign, as typeset); ``UTC+00:00`` for None."""
    seconds = int(offset.total_seconds()) if offset is not None else 0
    sign = "−" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def zone_name(zone: dt.tzinfo) -> str:
    """The key of a zone (``America/El_Salvador``), or its ``str`` for other tzinfo objects."""
    return getattr(zone, "key", None) or str(zone)


def offsets_in_span(zone: dt.tzinfo, start: pd.Timestamp, end: pd.Timestamp) -> list[str]:
    """The distinct UTC offsets of ``zone`` between two instants, in order of appearance.

    Samples every hour (at most ~2000 samples) so a DST change inside a run is caught.
    """
    start, end = _utc(start), _utc(end)
    if end < start:
        start, end = end, start
    hours = (end - start) / pd.Timedelta(hours=1)
    periods = int(min(max(hours, 1.0), 2000.0)) + 1
    instants = pd.date_range(start, end, periods=periods) if end > start else [start]
    seen: list[str] = []
    for t in instants:
        text = offset_text(t.to_pydatetime(warn=False).astimezone(zone).utcoffset())
        if text not in seen:
            seen.append(text)
    return seen


def axis_label(zone: dt.tzinfo, start: pd.Timestamp, end: pd.Timestamp, what: str = "time") -> str:
    """``time (America/El_Salvador, UTC−06:00)``; both offsets when DST changes in the span."""
    return f"{what} ({zone_name(zone)}, {' → '.join(offsets_in_span(zone, start, end))})"


def _utc(ts: pd.Timestamp | dt.datetime) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def to_zone(ts: pd.Timestamp | dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """An instant as wall-clock time in ``zone`` (naive UTC input is taken as UTC)."""
    return _utc(ts).to_pydatetime(warn=False).astimezone(zone)


def format_time(
    ts: pd.Timestamp | dt.datetime | None, zone: dt.tzinfo, *, with_date: bool = True
) -> str:
    """``2026-11-25 13:45:00.123 CST (UTC−06:00)``; an empty string for a missing time."""
    if ts is None or pd.isna(ts):
        return ""
    local = to_zone(ts, zone)
    clock = local.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")
    millis = local.microsecond // 1000
    abbrev = local.tzname() or ""
    # Abbreviations like "-06" only repeat the offset; keep them when they add a name (CST).
    label = f"{abbrev} " if abbrev and abbrev[0].isalpha() and abbrev != "UTC" else ""
    return f"{clock}.{millis:03d} {label}({offset_text(local.utcoffset())})"
