"""The `scalelab` command: bad input gives one clear line and leaves nothing; up/down works."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import one_clear_line, scalelab, scalelab_into_closed_pipe, ssh_answers
from leaks import PROJECT, snapshot

from harness.identity import host_routes
from harness.image.build import host_mirror
from harness.image.cache import Image, images_root
from harness.image.recipe import load_recipe
from harness.openfaults import FILE as OPEN_FAULTS

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
    # `scalelab ls | head -1`: a reader that leaves early ends ls quietly, like SIGPIPE.
    piped = scalelab_into_closed_pipe("ls")
    assert (piped.returncode, piped.stderr) == (141, ""), piped.stderr
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


HOST_ROUTES = (
    "import json; from harness.identity import host_routes; "
    "print(json.dumps([str(n) for n in host_routes()]))"
)


def test_subnet_parse_matches_routes() -> None:
    """host_routes() (what a lab subnet is checked against) in a throwaway namespace whose
    routes are known: connected, via a gateway, in another table; not the default route, nor
    the kernel's local and broadcast ones."""
    ns = f"sltest-routes-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # A veth pair (this kernel has no dummy links), both ends inside the namespace.
        for cmd in ("link add d0 type veth peer name d1", "link set d1 up", "link set d0 up",
                    "link set lo up",
                    "addr add 10.99.7.1/24 dev d0",
                    "route add 10.99.8.0/23 via 10.99.7.254",
                    "route add 192.0.2.128/25 dev d0 table 100",
                    "route add default via 10.99.7.254"):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", HOST_ROUTES],
                             cwd=PROJECT, capture_output=True, text=True, check=True)
        assert sorted(json.loads(out.stdout)) == ["10.99.7.0/24", "10.99.8.0/23",
                                                  "192.0.2.128/25"]
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=True)
    # And on this host: every route `ip route` shows (but the default) is among them.
    shown = json.loads(subprocess.run(["ip", "-j", "-4", "route"], capture_output=True,
                                      text=True, check=True).stdout)
    dsts = {str(ipaddress.IPv4Network(r["dst"], strict=False))
            for r in shown if r.get("dst") not in (None, "default")}
    assert dsts, "this host has no IPv4 route besides the default one"
    assert dsts <= {str(n) for n in host_routes()}


def test_fault_verbs_on_a_lab_left_up(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    reports = tmp_path / "reports"
    up = scalelab("up", "--guests", "3", "--reports-dir", str(reports))
    assert up.returncode == 0, up.stderr
    run_dir = (reports / "latest").resolve()
    run = run_dir.name  # named everywhere: another kept run on this host is not ours to touch
    cfg = run_dir / "ssh_config"

    try:
        assert scalelab("fault", "pause", "g001", "--run", run).returncode == 0
        assert not ssh_answers(cfg, "g001", timeout=4)  # frozen: no answer
        assert scalelab("fault", "resume", "g001", "--run", run).returncode == 0
        assert ssh_answers(cfg, "g001")
        assert scalelab("fault", "isolate", "g002", "--run", run).returncode == 0
        assert not ssh_answers(cfg, "g002", timeout=6)
        assert scalelab("fault", "heal", "--run", run).returncode == 0
        assert ssh_answers(cfg, "g002")
        assert ssh_answers(cfg, "g000")  # up before the kill, so that "no answer" means it
        assert scalelab("fault", "kill", "g000", "--run", run).returncode == 0
        assert not ssh_answers(cfg, "g000", timeout=6)
        bad = scalelab("fault", "pause", "g999", "--run", run)
        one_clear_line(bad, "no guest 'g999'")
        # Left paused: its window ends with the lab.
        assert scalelab("fault", "pause", "g002", "--run", run).returncode == 0
    finally:
        assert scalelab("down", run).returncode == 0
    assert before.diff(snapshot()) == {}
    rows = [json.loads(ln) for ln in (run_dir / "timings.jsonl").read_text().splitlines()]
    assert {(r["guest"], r["op"]) for r in rows if r["phase"] == "lost"} == {("g000", "lost")}
    # Each window made by hand is one row from the command that began it to the one that
    # ended it (the report's fault bands), like the nemesis's.
    bands = [r for r in rows if r["phase"] == "fault"]
    assert [(r["op"], r["guest"]) for r in bands] == [
        ("pause", "g001"), ("isolate", "g002"), ("kill", "g000"), ("pause", "g002")], bands
    assert all(r["end"] > r["start"] for r in bands)
    assert bands[0]["end"] < bands[1]["start"]
    assert not (run_dir / OPEN_FAULTS).exists()  # every window ended, the last at `down`


def _tbf(dev: str, netns: str | None = None) -> list[dict[str, Any]]:
    """The tbf qdiscs on ``dev`` (in ``netns``), as ``tc -j`` describes them."""
    argv = ["tc", "-j", "qdisc", "show", "dev", dev]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [q for q in json.loads(out or "[]") if q.get("kind") == "tbf"]


def _host_end(netns: str) -> str:
    """The host-side veth of a guest: the peer of the guest's eth0."""
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "eth0"], capture_output=True,
                         text=True, check=True).stdout
    peer = json.loads(out)[0]["link_index"]
    for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True,
                                          check=True).stdout):
        if link["ifindex"] == peer:
            return str(link["ifname"])
    raise AssertionError(f"no host end of {netns}'s eth0 (ifindex {peer})")


def test_fault_limit_and_unlimit_on_a_lab_left_up(image: Image, tmp_path: Path) -> None:
    """`fault limit` puts a tbf on both ends of the guest's veth, and the guest's output
    really comes at that rate; `fault unlimit` takes both away."""
    before = snapshot()
    reports = tmp_path / "reports"
    up = scalelab("up", "--guests", "2", "--reports-dir", str(reports))
    assert up.returncode == 0, up.stderr
    run_dir = (reports / "latest").resolve()
    run = run_dir.name
    cfg = str(run_dir / "ssh_config")
    (netns,) = [n for n in before.diff(snapshot())["netns"] if n.split()[0].endswith("-g001")]
    netns = netns.split()[0]  # `ip netns list` adds "(id: N)"
    veth = _host_end(netns)

    def fetch(n_bytes: int) -> float:
        """Seconds for g001 to send n_bytes to the host over SSH (checked to arrive whole)."""
        t0 = time.monotonic()
        out = subprocess.run(["ssh", "-F", cfg, "-o", "BatchMode=yes", "g001",
                              f"head -c {n_bytes} /dev/zero"], capture_output=True, timeout=120)
        took = time.monotonic() - t0
        assert out.returncode == 0 and len(out.stdout) == n_bytes, out.stderr
        return took

    try:
        assert _tbf(veth) == [] and _tbf("eth0", netns) == []
        res = scalelab("fault", "limit", "g001", "--rate", "1mbit", "--run", run)
        assert res.returncode == 0, res.stderr
        for q in (*_tbf(veth), *_tbf("eth0", netns)):
            assert q["options"]["rate"] == 1_000_000 // 8  # tc -j gives bytes per second
        assert len(_tbf(veth)) == 1 and len(_tbf("eth0", netns)) == 1
        # 250 kB at 125 kB/s cannot take less than 2 s, however idle or busy this host is.
        assert fetch(250_000) > 1.5
        assert (run_dir / OPEN_FAULTS).exists()  # the limit's window waits for its end
        res = scalelab("fault", "unlimit", "g001", "--run", run)
        assert res.returncode == 0, res.stderr
        rows = [json.loads(ln) for ln in (run_dir / "timings.jsonl").read_text().splitlines()]
        (band,) = [r for r in rows if r["phase"] == "fault"]
        assert (band["op"], band["guest"], band["error"]) == ("bandwidth", "g001", "1mbit")
        assert band["end"] - band["start"] > 1.5e9  # the fetch at the limited rate is in it
        assert _tbf(veth) == [] and _tbf("eth0", netns) == []
        # Ten times as much, in less than the 20 s the limit would have made it take.
        assert fetch(2_500_000) < 10
        # The other guest was never limited.
        (other,) = [n.split()[0] for n in before.diff(snapshot())["netns"]
                    if n.split()[0].endswith("-g000")]
        assert _tbf(_host_end(other)) == []
    finally:
        assert scalelab("down", run).returncode == 0
    assert before.diff(snapshot()) == {}


def _fake_cached(cache: Path, key: str, manifest: dict[str, Any], created: str) -> Path:
    """An image entry in ``cache`` (a manifest and a small stand-in for base.img)."""
    d = cache / "images" / key
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({**manifest, "key": key, "created": created}))
    (d / "base.img").write_bytes(b"not an image")
    return d


def _current_keys() -> tuple[str, str]:
    """The keys of the default recipe's images (plain and VM): what prune must keep."""
    recipe = load_recipe(None, PROJECT)
    recipe = recipe.with_mirror(recipe.mirror or host_mirror())
    return recipe.key(), recipe.with_vm().key()


def test_image_prune_keeps_current(image: Image, tmp_path: Path) -> None:
    """In a cache of its own (SCALELAB_CACHE), so no real cached image is ever at stake."""
    real = sorted(p.name for p in images_root().iterdir())
    cache = tmp_path / "cache"
    plain, vm = _current_keys()
    assert plain == image.key  # the image the tests use is the current one
    kept = [_fake_cached(cache, k, image.manifest, f"2026-12-0{i}T00:00:00Z")
            for i, k in enumerate((plain, vm), start=1)]
    old = [_fake_cached(cache, k, image.manifest, "2026-01-01T00:00:00Z")
           for k in ("00000000dead0001", "00000000dead0002")]
    env = {"SCALELAB_CACHE": str(cache)}
    listing = scalelab("image", "list", env=env)
    assert all(d.name in listing.stdout for d in [*kept, *old]), listing.stdout
    res = scalelab("image", "prune", env=env)
    assert res.returncode == 0, res.stderr
    for d in old:
        assert not d.exists() and f"removed {d.name}" in res.stdout
    for d in kept:
        assert (d / "base.img").read_bytes() == b"not an image" and d.name not in res.stdout
    assert "2 image(s) removed" in res.stdout
    again = scalelab("image", "prune", env=env)
    assert again.returncode == 0 and "0 image(s) removed" in again.stdout
    every = scalelab("image", "prune", "--all", env=env)
    assert every.returncode == 0 and "2 image(s) removed" in every.stdout
    assert not any((cache / "images").iterdir())
    assert sorted(p.name for p in images_root().iterdir()) == real  # the real cache: untouched
    # A recipe that does not exist is refused before anything is removed.
    kept = [_fake_cached(cache, "00000000dead0003", image.manifest, "2026-01-01T00:00:00Z")]
    res = scalelab("image", "prune", "--recipe", str(tmp_path / "missing.toml"), env=env)
    one_clear_line(res, "does not exist")
    assert kept[0].is_dir()


def test_image_verify(image: Image, tmp_path: Path) -> None:
    ok = scalelab("image", "verify", image.key)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"image {image.key}: {image.digest} ok"
    # A cached image whose file changed: named by key in its cache, and by its path.
    cache = tmp_path / "cache"
    bad = _fake_cached(cache, "00000000bad00001", image.manifest, "2026-01-01T00:00:00Z")
    for spec, env in (("00000000bad", {"SCALELAB_CACHE": str(cache)}), (str(bad), {})):
        res = scalelab("image", "verify", spec, env=env)
        assert res.returncode == 1, res.stdout + res.stderr
        actual = "sha256:" + hashlib.sha256(b"not an image").hexdigest()
        assert res.stdout.strip() == (f"image 00000000bad00001: digest {actual} does not "
                                      f"match {image.digest}")
    one_clear_line(scalelab("image", "verify", "nosuchkey", env={"SCALELAB_CACHE": str(cache)}),
                   "no cached image 'nosuchkey'")
