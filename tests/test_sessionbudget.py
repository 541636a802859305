"""``--sessions``: the rule that turns persistent executor sessions off when the host's
memory cannot hold N of them, the option's parsing, and what a lab with them off does."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import build_config
from harness.errors import UserError
from harness.sessionbudget import (
    HEADROOM,
    WITH_SESSION,
    available_bytes,
    sessions_off_reason,
)

GIB = 2**30
PROJECT = Path(__file__).resolve().parent.parent


def test_auto_keeps_sessions_while_they_fit_and_says_why_when_not() -> None:
    fits = int(1024 * WITH_SESSION / HEADROOM) + 1
    assert sessions_off_reason("auto", 1024, True, fits) is None
    why = sessions_off_reason("auto", 4096, True, 20 * GIB)
    assert why is not None
    assert why.startswith("4096 guests with a persistent session each need about 24.0 GiB")
    assert "20.0 GiB available" in why and "--sessions=on" in why


def test_vm_guests_and_explicit_modes_do_not_look_at_the_host_memory() -> None:
    # A VM's executor lives in the VM's own memory, sized when it started.
    assert sessions_off_reason("auto", 4096, False, 1 * GIB) is None
    assert sessions_off_reason("on", 4096, True, 1 * GIB) is None
    assert sessions_off_reason("off", 1, True, 100 * GIB) == (
        "persistent sessions are off (--sessions=off)")


def test_available_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemAvailable:    1048576 kB\n")
    assert available_bytes(f) == GIB
    assert available_bytes() > 0  # this host's


def test_the_option_takes_its_three_modes_only() -> None:
    assert build_config({}, PROJECT).sessions == "auto"
    assert build_config({"sessions": "off"}, PROJECT).sessions == "off"
    with pytest.raises(UserError, match=r"^--sessions='sometimes': one of auto, on, off$"):
        build_config({"sessions": "sometimes"}, PROJECT)
