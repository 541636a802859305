from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import build_config, parse_guests
from harness.errors import UserError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64", [64]), ("1,2,4", [1, 2, 4]), (" 8 , 2 ", [2, 8]), (3, [3])],
)
def test_parse_guests(text: str | int, expected: list[int]) -> None:
    assert parse_guests(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "at least 1"),
        ("-3", "at least 1"),
        ("abc", "not a whole number"),
        ("1,,4", "empty entry"),
        ("", "empty entry"),
        ("2,2", "appears twice"),
        ("99999", "at most"),
    ],
)
def test_parse_guests_rejects(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_guests(text)


def test_pyproject_defaults_and_precedence(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.scalelab]\nguests = "1,2"\nssh_concurrency = 5\nbackend = "netns"\n'
    )
    cfg = build_config({}, tmp_path)
    assert cfg.guests == [1, 2]
    assert cfg.ssh_concurrency == 5
    cfg = build_config({"guests": "16", "ssh_concurrency": "7"}, tmp_path)
    assert cfg.guests == [16]
    assert cfg.ssh_concurrency == 7


def test_unknown_pyproject_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.scalelab]\nguestz = 3\n")
    with pytest.raises(UserError, match="unknown key"):
        build_config({}, tmp_path)


def test_bad_values(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown backend"):
        build_config({"backend": "vmware"}, tmp_path)
    with pytest.raises(UserError, match="ssh-concurrency"):
        build_config({"ssh_concurrency": "0"}, tmp_path)
    with pytest.raises(UserError, match="guest-memory"):
        build_config({"guest_memory": "lots"}, tmp_path)
    with pytest.raises(UserError, match="guest-cpus"):
        build_config({"guest_cpus": "-1"}, tmp_path)


def test_backend_urls() -> None:
    from harness.backends import parse_backend

    url = parse_backend("qemu://?memory=256M&accel=tcg")
    assert url.scheme == "qemu"
    assert url.options == {"memory": "256M", "accel": "tcg"}
    url = parse_backend("xen://root@127.0.0.1:2222")
    assert (url.user, url.host, url.port) == ("root", "127.0.0.1", 2222)
    assert parse_backend("netns").scheme == "netns"
    with pytest.raises(UserError, match="port"):
        parse_backend("xen://root@host:notaport")
