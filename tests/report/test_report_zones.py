"""Time zones: which zone a report is drawn in, and that the axes really show it."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from harness.errors import UserError
from harness.report import plots, resolve_zone, zones
from harness.report.plots.resources import guests_figure, host_figure
from harness.report.resources import tidy_samples
from harness.report.timeaxis import date_num, setup_time_axis
from harness.report.zones import axis_label, format_time, offset_text, to_zone, zone_for_run

NOON_JAN = pd.Timestamp("2026-01-15T12:00:00", tz="UTC")
NOON_JUL = pd.Timestamp("2026-07-15T12:00:00", tz="UTC")
NOON_NOV = pd.Timestamp("2026-11-25T12:00:00", tz="UTC")


def _ops_around(noon: pd.Timestamp) -> pd.DataFrame:
    """Workload rows from 11:00 to 13:00 UTC, one of them exactly at noon."""
    starts = [noon + pd.Timedelta(minutes=m) for m in (-60, -30, 0, 30, 60)]
    return pd.DataFrame(
        {
            "start": pd.to_datetime(starts, utc=True),
            "end": pd.to_datetime([s + pd.Timedelta(milliseconds=20) for s in starts], utc=True),
            "duration_s": 0.02,
            "ok": True,
            "n_guests": 4,
            "guest": "g000",
            "op": "roundtrip",
        }
    )


def _no_rows() -> pd.DataFrame:
    empty = pd.to_datetime([], utc=True)
    return pd.DataFrame({"start": empty, "end": empty})


def _tick_labels(fig: Figure) -> dict[str, float]:
    """Rendered tick label text → tick position, for the first axes of ``fig``."""
    fig.canvas.draw()
    ax = fig.axes[0]
    return {t.get_text(): float(t.get_position()[0]) for t in ax.get_xticklabels() if t.get_text()}


@pytest.mark.parametrize(
    ("zone", "noon", "local"),
    [
        ("America/El_Salvador", NOON_NOV, "06:00"),
        ("Europe/Paris", NOON_JAN, "13:00"),
        ("Europe/Paris", NOON_JUL, "14:00"),
    ],
)
def test_conversion_puts_noon_utc_at_local_time(zone: str, noon: pd.Timestamp, local: str) -> None:
    assert to_zone(noon, zoneinfo.ZoneInfo(zone)).strftime("%H:%M") == local


@pytest.mark.parametrize(
    ("zone", "noon", "local", "offset"),
    [
        ("America/El_Salvador", NOON_NOV, "06:00", "UTC−06:00"),
        ("Europe/Paris", NOON_JAN, "13:00", "UTC+01:00"),
        ("Europe/Paris", NOON_JUL, "14:00", "UTC+02:00"),
    ],
)
def test_plot_axis_shows_local_time_and_names_zone(
    zone: str, noon: pd.Timestamp, local: str, offset: str
) -> None:
    """The operation at 12:00 UTC sits exactly under the tick labelled with local time."""
    fig = plots.latency_over_time(
        _ops_around(noon), zoneinfo.ZoneInfo(zone), _no_rows(), _no_rows(), "t"
    )
    ticks = _tick_labels(fig)
    assert local in ticks, ticks
    assert ticks[local] == pytest.approx(date_num(noon))
    assert fig.axes[0].get_xlabel() == f"time ({zone}, {offset})"


def test_axis_helper_labels_ticks_in_zone() -> None:
    fig = plots.new_figure()
    ax = fig.add_subplot()
    setup_time_axis(
        ax,
        zoneinfo.ZoneInfo("America/El_Salvador"),
        NOON_NOV - pd.Timedelta(hours=1),
        NOON_NOV + pd.Timedelta(hours=1),
    )
    ticks = _tick_labels(fig)
    assert "06:00" in ticks and "12:00" not in ticks


def test_axis_label_names_both_offsets_across_dst() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    # Paris moves from UTC+01:00 to UTC+02:00 at 01:00 UTC on 2026-03-29.
    start = pd.Timestamp("2026-03-28T23:00", tz="UTC")
    end = pd.Timestamp("2026-03-29T03:00", tz="UTC")
    assert axis_label(paris, start, end) == "time (Europe/Paris, UTC+01:00 → UTC+02:00)"
    assert axis_label(paris, start, start) == "time (Europe/Paris, UTC+01:00)"


def test_offset_text_uses_real_minus() -> None:
    assert offset_text(dt.timedelta(hours=-6)) == "UTC−06:00"
    assert offset_text(dt.timedelta(hours=5, minutes=30)) == "UTC+05:30"
    assert offset_text(None) == "UTC+00:00"


def test_format_time_names_zone_and_offset() -> None:
    text = format_time(NOON_NOV, zoneinfo.ZoneInfo("America/El_Salvador"))
    assert text == "2026-11-25 06:00:00.000 CST (UTC−06:00)"
    assert format_time(None, zoneinfo.ZoneInfo("UTC")) == ""


# --- resolve_zone: argument > TZ > /etc/localtime > UTC ------------------------------------


@pytest.fixture
def fake_localtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/etc/localtime pointing into a fake zoneinfo tree at Europe/Paris; TZ unset."""
    target = tmp_path / "usr/share/zoneinfo/Europe/Paris"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"TZif")
    link = tmp_path / "localtime"
    link.symlink_to(target)
    monkeypatch.setattr(zones, "LOCALTIME", link)
    monkeypatch.delenv("TZ", raising=False)
    return link


def test_argument_wins(fake_localtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert resolve_zone("America/El_Salvador").key == "America/El_Salvador"


def test_tz_env_beats_localtime(fake_localtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert resolve_zone(None).key == "Asia/Tokyo"
    monkeypatch.setenv("TZ", ":Asia/Kolkata")  # POSIX form with a leading colon
    assert resolve_zone(None).key == "Asia/Kolkata"


def test_localtime_symlink_gives_key(fake_localtime: Path) -> None:
    assert resolve_zone(None).key == "Europe/Paris"
    assert resolve_zone("").key == "Europe/Paris"  # an empty --tz means "not given"


def test_copied_or_missing_localtime_falls_back_to_utc(
    fake_localtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied = fake_localtime.parent / "copied"
    copied.write_bytes(b"TZif")
    monkeypatch.setattr(zones, "LOCALTIME", copied)
    assert resolve_zone(None).key == "UTC"
    monkeypatch.setattr(zones, "LOCALTIME", fake_localtime.parent / "missing")
    assert resolve_zone(None).key == "UTC"


def test_zone_path_is_accepted() -> None:
    assert resolve_zone("/usr/share/zoneinfo/posix/Europe/Paris").key == "Europe/Paris"


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "America", "../etc/passwd", "CET-1CEST"])
def test_unknown_zone_is_one_clear_line(name: str) -> None:
    with pytest.raises(UserError) as err:
        resolve_zone(name)
    message = str(err.value)
    assert "\n" not in message
    assert f"unknown time zone {name!r}" in message
    assert "/usr/share/zoneinfo" in message and "available_timezones" in message


def test_unknown_zone_suggests_close_name() -> None:
    with pytest.raises(UserError, match="did you mean Europe/Paris"):
        resolve_zone("Europe/Pariss")


def test_unknown_tz_env_says_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Nowhere/Land")
    with pytest.raises(UserError, match="TZ environment variable"):
        resolve_zone(None)


def test_report_zone_falls_back_from_bad_run_json(fake_localtime: Path) -> None:
    warnings: list[str] = []
    assert zone_for_run(None, {"report_tz": "Bad/Zone"}, warnings).key == "Europe/Paris"
    assert warnings and "Bad/Zone" in warnings[0]
    assert zone_for_run(None, {"report_tz": "Asia/Tokyo"}).key == "Asia/Tokyo"
    assert zone_for_run("UTC", {"report_tz": "Asia/Tokyo"}).key == "UTC"


def _samples_around(noon: pd.Timestamp) -> pd.DataFrame:
    """A host and a guest sampled every minute from 11:00 to 13:00 UTC, the host's CPU and
    the guest's busy only in the minute before noon."""
    rows = []
    busy = total = guest_cpu = 0.0
    for m in range(-60, 61):
        t = noon + pd.Timedelta(minutes=m)
        spike = m == 0  # the minute ending at noon
        busy += 60.0 if spike else 3.0
        total += 60.0
        guest_cpu += 60.0 if spike else 0.0
        for resource, value, guest in (("cpu_busy_seconds", busy, ""),
                                       ("cpu_total_seconds", total, ""),
                                       ("memory_used_bytes", 1e9, ""),
                                       ("memory_total_bytes", 4e9, ""), ("load1", 0.5, ""),
                                       ("cpu_seconds", guest_cpu, "g000"),
                                       ("net_tx_bytes", 1e6 * (m + 61), "g000")):
            rows.append({"lab": "default", "guest": guest, "t": t, "resource": resource,
                         "item": "cpu0" if resource.startswith("cpu_") and not guest else "",
                         "kind": "gauge" if resource.startswith(("memory", "load")) else
                         "counter", "value": value, "unit": ""})
    return tidy_samples(pd.DataFrame(rows))


@pytest.mark.parametrize("figure", ["host", "guests"])
def test_resource_plots_in_a_half_hour_zone(figure: str) -> None:
    """Asia/Kolkata is UTC+05:30: the CPU peak at 12:00 UTC is drawn under the 17:30 tick,
    and the axis names the zone and its half-hour offset."""
    zone = zoneinfo.ZoneInfo("Asia/Kolkata")
    samples = _samples_around(NOON_NOV)
    draw = host_figure if figure == "host" else guests_figure
    spans = pd.DataFrame({"start": [NOON_NOV - pd.Timedelta(minutes=30)],
                          "end": [NOON_NOV + pd.Timedelta(minutes=30)],
                          "label": ["test_load[n=4]"]})
    fig = draw(samples, zone, _no_rows(), _no_rows(), spans)
    assert fig is not None
    fig.canvas.draw()
    ax, bottom = fig.axes[0], fig.axes[-1]  # the panels share the axis, labelled at the bottom
    ticks = {t.get_text(): float(t.get_position()[0]) for t in bottom.get_xticklabels()
             if t.get_text()}
    assert "17:30" in ticks, ticks
    assert ticks["17:30"] == pytest.approx(date_num(NOON_NOV))
    assert bottom.get_xlabel() == "time (Asia/Kolkata, UTC+05:30)"
    line = ax.get_lines()[0]
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    peak = float(x[int(np.argmax(y))])
    assert peak == pytest.approx(date_num(NOON_NOV))
    # The scenario's start is marked where 17:00 local is.
    (mark,) = [t for t in ax.texts if "test_load[n=4]" in t.get_text()]
    assert mark.get_position()[0] == pytest.approx(date_num(NOON_NOV - pd.Timedelta(minutes=30)))
