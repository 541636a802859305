"""The jinja2 environment of the report pages and the filters that format numbers and times."""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from harness.report.export import slug
from harness.report.zones import format_time


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and other non-scalars are never "missing"
        return False


def fmt_latency(seconds: Any) -> str:
    """``12.3 ms`` under a second, ``1.234 s`` above; ``–`` when unknown."""
    if _missing(seconds):
        return "–"
    s = float(seconds)
    if abs(s) < 1.0:
        return f"{s * 1000:.3g} ms" if abs(s) >= 0.001 else f"{s * 1e6:.3g} µs"
    return f"{s:.3f} s"


def fmt_number(value: Any, digits: int = 1) -> str:
    """Thousands separators; ``–`` when unknown."""
    if _missing(value):
        return "–"
    v = float(value)
    if math.isfinite(v) and v == int(v) and digits == 0:
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def fmt_percent(value: Any, digits: int = 1) -> str:
    return "–" if _missing(value) else f"{float(value) * 100:.{digits}f} %"


def fmt_signed_percent(value: Any) -> str:
    return "–" if _missing(value) else f"{float(value) * 100:+.1f} %"


def fmt_duration(seconds: Any) -> str:
    """``1 h 02 min 03 s``-style wall times for the summary."""
    if _missing(seconds):
        return "–"
    s = float(seconds)
    if s < 60:
        return f"{s:.2f} s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {sec:02d} s" if h else f"{m} min {sec:02d} s"


def fmt_metric(value: Any, unit: Any) -> str:
    """A metric value with its unit: bytes as KiB/MiB/…, latencies as ms, else 4 digits."""
    if _missing(value):
        return "–"
    u = "" if _missing(unit) else str(unit)
    if u.lower() in {"b", "bytes"}:
        return fmt_bytes(value)
    if u.lower() in {"b/s", "bytes/s"}:
        return fmt_bytes(value) + "/s"
    if u == "s":
        return fmt_latency(value)
    return f"{fmt_si(value)} {u}".rstrip()


def fmt_si(value: Any) -> str:
    """``241.4 k``-style numbers so a million does not print as ``1e+06``."""
    v = float(value)
    for factor, prefix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(v) >= factor:
            return f"{v / factor:.4g}{prefix}"
    return f"{v:.4g}"


def fmt_bytes(n: Any) -> str:
    if _missing(n):
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def environment(zone: dt.tzinfo) -> jinja2.Environment:
    """Templates from ``harness/templates`` with autoescape and filters bound to ``zone``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template fails the tests, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=lambda ts, with_date=True: format_time(
            None if _missing(ts) else ts, zone, with_date=with_date
        ),
        latency=fmt_latency,
        num=fmt_number,
        pct=fmt_percent,
        signed_pct=fmt_signed_percent,
        duration=fmt_duration,
        bytes=fmt_bytes,
        metric=fmt_metric,
        slug=slug,
    )
    return env


def write_page(env: jinja2.Environment, template: str, target: Path, **context: Any) -> Path:
    """Render ``template`` into ``target`` atomically (a reader never sees half a page)."""
    html = env.get_template(template).render(**context)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, target)
    return target
