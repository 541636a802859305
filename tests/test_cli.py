"""The `scalelab` command: bad input gives one clear line and leaves nothing; up/down works."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import one_clear_line, scalelab
from leaks import PROJECT, snapshot

from harness.identity import host_routes
from harness.image.cache import Image

pytestmark = pytest.mark.integration


def _a_host_route() -> str:
    """A route of this host that is not a lab's (labs come and go; the uplink stays)."""
    import json

    out = subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True)
    for r in json.loads(out.stdout or "[]"):
        dst, dev = r.get("dst", ""), r.get("dev", "")
        if dst not in ("", "default") and not dev.startswith(("sl", "lo")):
            return str(ipaddress.IPv4Network(dst, strict=False))
    raise AssertionError("this host has no IPv4 route to overlap")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--guests", "0"], ["at least 1"]),
        (["--guests", "-2"], ["at least 1"]),
        (["--guests", "abc"], ["not a whole number"]),
        (["--guests", "4", "--backend", "vmware"], ["unknown backend", "netns"]),
        (["--guests", "4", "--image", "nosuchimage"], ["no cached image"]),
        (["--guests", "64", "--subnet", "10.77.0.0/28"], ["holds 13 guests, 64 asked"]),
        (["--guests", "4", "--subnet", "ROUTE"], ["overlaps the host route"]),
        (["--guests", "4", "--backend", "netns://?bridge=lo"], ["already exists"]),
        (["--guests", "4", "--report-tz", "Mars/Olympus"], ["unknown", "zone"]),
    ],
)
def test_up_bad_input(args: list[str], needles: list[str], image: Image, tmp_path: Path) -> None:
    args = [a.replace("ROUTE", _a_host_route()) for a in args]
    before = snapshot()
    res = scalelab("up", *args, "--reports-dir", str(tmp_path / "r"))
    one_clear_line(res, *needles)
    assert before.diff(snapshot()) == {}


DROP_ROOT = """
import os, sys
import harness.cli, harness.lab, harness.session, harness.backends.netns  # loaded as root
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # then run as nobody
sys.exit(harness.cli.main(sys.argv[1:]))
"""


def test_up_needs_root(image: Image, tmp_path: Path) -> None:
    # The modules are imported before dropping root: the checkout may not be readable by
    # nobody (a mktemp -d clone is mode 0700), and the point is the check, not the import.
    res = subprocess.run(
        [sys.executable, "-c", DROP_ROOT, "up", "--guests", "2", "--reports-dir",
         str(tmp_path / "r"), "--image", image.key],
        cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )
    one_clear_line(res, "needs root")
    assert not (tmp_path / "r").exists()


def test_corrupt_image_is_refused(image: Image, tmp_path: Path) -> None:
    fake = tmp_path / "img"
    fake.mkdir()
    (fake / "manifest.json").write_text((image.dir / "manifest.json").read_text())
    (fake / "base.img").write_bytes(b"\0" * 4096)
    res = scalelab("up", "--guests", "1", "--image", str(fake), "--reports-dir",
                   str(tmp_path / "r"))
    one_clear_line(res, "rebuild")


def test_unwritable_reports_dir(image: Image, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = scalelab("up", "--guests", "1", "--reports-dir", str(blocker / "reports"))
    one_clear_line(res, "cannot write the reports directory")


def test_up_ssh_down(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    reports = tmp_path / "reports"
    res = scalelab("up", "--guests", "3", "--reports-dir", str(reports))
    assert res.returncode == 0, res.stderr
    assert "is up: 3 guests" in res.stdout
    run_dir = (reports / "latest").resolve()
    assert (run_dir / "ssh_config").is_file()
    assert not (run_dir / "id_ed25519").exists()  # the private key stays out of reports
    out = subprocess.run(["ssh", "-F", str(run_dir / "ssh_config"), "-o", "BatchMode=yes",
                          "g001", "hostname"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "g001", out.stderr
    ls = scalelab("ls")
    assert run_dir.name in ls.stdout and "kept up" in ls.stdout
    # `clean` leaves a lab that was kept up on purpose alone.
    scalelab("clean")
    assert run_dir.name in scalelab("ls").stdout
    down = scalelab("down")
    assert down.returncode == 0, down.stderr
    assert f"run {run_dir.name} is down" in down.stdout
    assert before.diff(snapshot()) == {}


def test_image_build_is_cached(image: Image) -> None:
    res = scalelab("image", "build")
    assert res.returncode == 0, res.stderr
    assert "already built" in res.stdout and image.key in res.stdout
    listing = scalelab("image", "list")
    assert image.key in listing.stdout and image.digest in listing.stdout


def test_subnet_parse_matches_routes() -> None:
    # host_routes() sees real routes of this host (the guest subnets are checked against it).
    for r in host_routes():
        assert isinstance(r, ipaddress.IPv4Network)


def test_fault_verbs_on_a_lab_left_up(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    reports = tmp_path / "reports"
    up = scalelab("up", "--guests", "3", "--reports-dir", str(reports))
    assert up.returncode == 0, up.stderr
    run_dir = (reports / "latest").resolve()
    cfg = str(run_dir / "ssh_config")

    def ssh(guest: str, timeout: float = 10) -> int:
        try:
            return subprocess.run(["ssh", "-F", cfg, "-o", "BatchMode=yes", "-o",
                                   "ConnectTimeout=3", guest, "true"],
                                  capture_output=True, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return -1

    try:
        assert scalelab("fault", "pause", "g001").returncode == 0
        assert ssh("g001", timeout=4) != 0  # frozen: no answer
        assert scalelab("fault", "resume", "g001").returncode == 0
        assert ssh("g001") == 0
        assert scalelab("fault", "isolate", "g002").returncode == 0
        assert ssh("g002", timeout=6) != 0
        assert scalelab("fault", "heal").returncode == 0
        assert ssh("g002") == 0
        assert scalelab("fault", "kill", "g000").returncode == 0
        assert ssh("g000", timeout=6) != 0
        bad = scalelab("fault", "pause", "g999")
        one_clear_line(bad, "no guest 'g999'")
    finally:
        assert scalelab("down").returncode == 0
    assert before.diff(snapshot()) == {}
    rows = (run_dir / "timings.jsonl").read_text()
    assert '"phase":"lost"' in rows and '"guest":"g000"' in rows


def test_image_prune_keeps_current(image: Image, tmp_path: Path) -> None:
    res = scalelab("image", "prune", "--recipe", str(tmp_path / "missing.toml"))
    one_clear_line(res, "does not exist")
    listing = scalelab("image", "list").stdout
    assert image.key in listing
