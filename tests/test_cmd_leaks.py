"""The leak check itself: a tool it needs that is missing or failing is an error, never an
empty answer (which would make every "left nothing behind" assertion pass unchecked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from leaks import TOOLS, LeakCheckBroken, snapshot


def _path_with(tmp_path: Path, tools: dict[str, str]) -> str:
    """A PATH directory holding links to the real ``tools`` and the given stand-ins."""
    d = tmp_path / "bin"
    d.mkdir()
    for name, script in tools.items():
        if script:
            (d / name).write_text(script)
            (d / name).chmod(0o755)
        else:
            real = shutil.which(name)
            assert real is not None, f"{name} is not installed here"
            (d / name).symlink_to(real)
    return str(d)


def test_every_tool_is_there_and_answers() -> None:
    for tool in TOOLS:
        assert shutil.which(tool), tool
    snap = snapshot()
    assert "lo" in snap.links and snap.mounts  # it looked at this host


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_missing_tool_fails_loudly(tool: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    others = {t: "" for t in TOOLS if t != tool}
    monkeypatch.setenv("PATH", _path_with(tmp_path, others))
    with pytest.raises(LeakCheckBroken) as err:
        snapshot()
    assert f"{tool} (Debian package {TOOLS[tool]})" in str(err.value)


def test_a_failing_tool_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pgrep's "no match" (1) is an answer; 2 and 3 (bad usage, fatal error) are not.
    tools = {t: "" for t in TOOLS} | {"pgrep": "#!/bin/sh\necho 'pgrep: broken' >&2\nexit 3\n"}
    monkeypatch.setenv("PATH", _path_with(tmp_path, tools))
    with pytest.raises(LeakCheckBroken, match=r"pgrep .* exited 3: pgrep: broken"):
        snapshot()
