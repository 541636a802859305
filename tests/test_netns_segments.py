"""The netns lab network past one bridge, made small: segment bridges (``ports_per_bridge``),
every guest's MAC a static forwarding entry, no IPv6 link-local chatter on the lab's links.

What it stands for: at 4096 guests, a bridge that had not learned a guest's MAC flooded the
host's SYNs to ~1000 veths and the copies bound for the segment bridges were dropped; and
IPv6 link-up multicast, flooded to every port, cost a quarter of the host in softirq.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import one_clear_line, scalelab
from helpers.labs import run_ok
from leaks import PROJECT, snapshot

from harness.backends.netns.backend import NetnsBackend
from harness.config import build_config
from harness.image.cache import Image
from harness.lab import Lab
from harness.session import Session

pytestmark = pytest.mark.integration
N = 5  # two guests per bridge: the lab bridge and segments 1 and 2


@pytest.fixture(scope="module")
def lab(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    before = snapshot()
    cfg = build_config({"guests": str(N), "reports_dir": str(tmp_path_factory.mktemp("r")),
                        "backend": "netns://?ports_per_bridge=2"}, PROJECT)
    s = Session(cfg, image=image)
    try:
        yield s.lab_up(N)
    finally:
        s.finish(render=False)
    assert before.diff(snapshot()) == {}


def fdb(bridge: str) -> dict[str, tuple[str, str]]:
    """MAC → (port, state) of the entries ``bridge`` forwards by (not its own addresses)."""
    out = subprocess.run(["bridge", "-j", "fdb", "show", "br", bridge], check=True,
                         capture_output=True, text=True).stdout
    return {e["mac"]: (e["ifname"], e.get("state", "")) for e in json.loads(out)
            if e.get("master") == bridge and e.get("state") != "permanent"}


def master(link: str) -> str:
    return Path(f"/sys/class/net/{link}/master").resolve().name


def test_guests_spread_over_segment_bridges(lab: Lab) -> None:
    backend = lab.backend
    assert isinstance(backend, NetnsBackend)
    run = backend.run
    segments = [run.segment(g.spec) for g in lab.guests]
    assert segments == [0, 0, 1, 1, 2]
    for g, k in zip(lab.guests, segments, strict=True):
        assert master(run.veth_name(g.spec)) == run.segment_bridge(k)
    for k in (1, 2):
        assert master(run.uplink(k)) == run.bridge
        assert master(run.uplink(k) + "p") == run.segment_bridge(k)


def test_every_guest_mac_is_a_static_entry_on_its_way(lab: Lab) -> None:
    backend = lab.backend
    assert isinstance(backend, NetnsBackend)
    run = backend.run
    top = fdb(run.bridge)
    for g in lab.guests:
        k, mac = run.segment(g.spec), g.spec.mac.lower()
        # On its own bridge, the guest's port; on the lab bridge, the uplink to its segment.
        assert fdb(run.segment_bridge(k))[mac] == (run.veth_name(g.spec), "static")
        if k:
            assert top[mac] == (run.uplink(k), "static")


def test_no_ipv6_link_local_on_the_lab_links(lab: Lab) -> None:
    backend = lab.backend
    assert isinstance(backend, NetnsBackend)
    for g in lab.guests:
        assert run_ok(lab, g.name, "ip -6 -o addr show dev eth0").strip() == ""
        assert "::1/128" in run_ok(lab, g.name, "ip -6 -o addr show dev lo")
        host_side = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev",
                                    backend.run.veth_name(g.spec)],
                                   check=True, capture_output=True, text=True).stdout
        assert host_side.strip() == ""


def test_guests_reach_each_other_across_segments(lab: Lab) -> None:
    # g on the lab bridge to the last guest (segment 2) and back: ARP and TCP through the
    # uplinks, both ways.
    first, last = lab.guests[0], lab.guests[-1]
    probe = "python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], 22), 5)' "
    run_ok(lab, first.name, probe + last.spec.address)
    run_ok(lab, last.name, probe + first.spec.address)


@pytest.mark.parametrize("value", ["0", "1001", "two", "-3"])
def test_bad_ports_per_bridge_is_one_line(value: str, image: Image, tmp_path: Path) -> None:
    before = snapshot()
    res = scalelab("up", "--guests", "2", "--reports-dir", str(tmp_path / "r"),
                   "--backend", f"netns://?ports_per_bridge={value}")
    one_clear_line(res, "ports_per_bridge", "1 to 1000")
    assert before.diff(snapshot()) == {}
