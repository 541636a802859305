"""One lab network across lab hosts: VXLAN between the lab bridges, one subnet, the MTU.

The integration tests bring up ``--cluster=local:3``: three shards on this machine, each an
emulated lab host (a "host" namespace holding its underlay end and its VXLAN socket) on an
underlay bridge, so frames between shards are really encapsulated and cross an IP underlay.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.labs import lab_session, run_ok
from leaks import Snapshot, snapshot

from harness.backends.inject import inject
from harness.cluster import network
from harness.cluster.lab import ClusterLab
from harness.cluster.overlay import (
    Overlay,
    allocate_blocks,
    emulate_underlay,
    underlay_of,
    unreachable_pairs,
)
from harness.cluster.plan import LabWorker
from harness.cluster.tunnel import Tunnel
from harness.errors import UserError
from harness.identity import run_tag
from harness.image.cache import Image
from harness.plumbing import nft, vxlan
from harness.session import Session
from harness.state import RunState

N = 6  # two guests on each of three lab hosts
PORT = 5202


# -- without a lab -----------------------------------------------------------------------


def test_one_subnet_a_block_per_shard() -> None:
    routes = [ipaddress.IPv4Network("10.213.0.0/24")]
    net, blocks = allocate_blocks([8, 8, 300], routes, None)
    assert net.prefixlen == 21 and not net.overlaps(routes[0])
    assert blocks == [str(b) for b in list(net.subnets(new_prefix=23))[:3]]
    net, blocks = allocate_blocks([2, 2], [], "10.60.0.0/16")
    assert str(net) == "10.60.0.0/23" and blocks == ["10.60.0.0/24", "10.60.1.0/24"]
    with pytest.raises(UserError, match="too small"):
        allocate_blocks([200, 200, 200], [], "10.60.0.0/24")


def _overlay(**kw: object) -> Overlay:
    base: dict[str, object] = dict(
        vni=7, port=4789, mtu=1450, underlay_mtu=1500, subnet="10.60.0.0/22",
        blocks=("10.60.0.0/24", "10.60.1.0/24", "10.60.2.0/24"),
        underlay=("192.0.2.1", "192.0.2.2", "192.0.2.3"), lab_hosts=("a", "b", "c"))
    base.update(kw)
    return Overlay(**base)  # type: ignore[arg-type]


def test_addresses_in_blocks_on_one_link() -> None:
    o = _overlay()
    assert str(o.guest_ip(0, 0)) == "10.60.0.2/22" and str(o.gateway(0)) == "10.60.0.1"
    assert str(o.guest_ip(2, 5)) == "10.60.2.7/22" and str(o.gateway(2)) == "10.60.2.1"
    assert o.peers_of(1) == ["192.0.2.1", "192.0.2.3"]
    d = o.describe()
    assert d["underlay"] == {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}
    assert (d["kind"], d["vni"], d["port"], d["mtu"]) == ("vxlan", 7, 4789, 1450)


def test_the_pair_that_cannot_talk_is_named() -> None:
    o = _overlay()
    problems = unreachable_pairs(o, [{"b", "c"}, {"a"}, {"a"}])
    assert problems == ["lab hosts b (192.0.2.2) and c (192.0.2.3) cannot exchange VXLAN "
                        "packets on UDP port 4789 (b → c, c → b lost)"]
    assert unreachable_pairs(o, [{"b", "c"}, {"a", "c"}, {"a", "b"}]) == []


def _facts(machine: str, addresses: dict[str, int], underlay: str = "") -> dict[str, object]:
    return {"machine_id": machine, "addresses": addresses, "underlay": underlay}


def test_underlay_of_a_real_lab_host() -> None:
    w = LabWorker("tcp://192.0.2.5:4321")
    assert underlay_of(w, _facts("m", {"192.0.2.5": 9000}), "a") == ("192.0.2.5", 9000)
    # SCALELAB_UNDERLAY in the worker's environment wins over its Dask address.
    got = underlay_of(w, _facts("m", {"192.0.2.5": 1500, "198.51.100.7": 1400},
                                "198.51.100.7"), "a")
    assert got == ("198.51.100.7", 1400)
    with pytest.raises(UserError, match=r"198\.51\.100\.9 \(SCALELAB_UNDERLAY of its "
                                        r"worker\) is not on any of its interfaces"):
        underlay_of(w, _facts("m", {"192.0.2.5": 1500}, "198.51.100.9"), "a")
    with pytest.raises(UserError, match="loopback"):
        underlay_of(LabWorker("tcp://127.0.0.1:1"), _facts("m", {"127.0.0.1": 65536}), "a")


def test_decide_for_real_lab_hosts() -> None:
    """The smallest underlay MTU less 50; one lab worker per machine; nothing made."""
    placement = [(LabWorker("tcp://192.0.2.5:1"), 2), (LabWorker("tcp://192.0.2.6:1"), 2)]
    facts: dict[str, dict[str, object]] = {
        "tcp://192.0.2.5:1": {**_facts("m1", {"192.0.2.5": 9000}), "lab_host": "a"},
        "tcp://192.0.2.6:1": {**_facts("m2", {"192.0.2.6": 1500}), "lab_host": "b"},
    }
    o = network.decide("r1", 4789, placement, facts, [], None)
    assert (o.mtu, o.underlay, o.emulated) == (1450, ("192.0.2.5", "192.0.2.6"), False)
    assert o.host_netns == () and o.vni == vxlan.vni_for("r1")
    facts["tcp://192.0.2.6:1"]["machine_id"] = "m1"
    with pytest.raises(UserError, match="lab hosts a and b are one machine"):
        network.decide("r1", 4789, placement, facts, [], None)
    with pytest.raises(UserError, match="--vxlan-port=70000"):
        network.decide("r1", 70000, placement, facts, [], None)


def test_forwarding_entries_and_partition_rules() -> None:
    lines = vxlan.fdb_lines("slx1", ["192.0.2.2"], {"02:00:00:00:00:09": "192.0.2.2"})
    assert lines == ["fdb append 00:00:00:00:00:00 dev slx1 dst 192.0.2.2 self permanent",
                     "fdb replace 02:00:00:00:00:09 dev slx1 dst 192.0.2.2 self permanent"]
    rules = nft.partition_ruleset("slq-x", ["02:AA:00:00:00:01"], ["02:00:00:00:00:02"],
                                 by_mac=True)
    assert "ether saddr @side_a ether daddr @side_b drop" in rules
    assert "02:aa:00:00:00:01" in rules


def left_by(before: Snapshot, run_ids: list[str]) -> dict[str, set[str]]:
    """What appeared since ``before`` and names one of ``run_ids`` (or its tag): other
    people's labs on this machine are none of this test's business."""
    needles = {*run_ids, *(run_tag(r) for r in run_ids)}
    left = {}
    for kind, items in before.diff(snapshot()).items():
        mine = {x for x in items if any(n in x for n in needles)}
        if mine:
            left[kind] = mine
    return left


# -- the pre-boot probe, on real devices over an emulated underlay ------------------------


@pytest.mark.integration
def test_probe_names_the_pair_that_cannot_exchange(root: None, tmp_path: Path) -> None:
    """Three emulated lab hosts; host c's underlay drops UDP to the VXLAN port: the probe
    sees a ↔ b and names a–c and b–c, and everything made is journalled and removed."""
    before = snapshot()
    run_id = f"probe-{tmp_path.name}"
    state = RunState.create(run_id, kept=False, backend="test")
    try:
        hosts, _, _ = emulate_underlay(state, run_id, 3)
        o = _overlay(underlay=("198.18.0.1", "198.18.0.2", "198.18.0.3"), host_netns=tuple(hosts),
                     emulated=True, port=4790)
        subprocess.run(["ip", "netns", "exec", hosts[2], "nft", "-f", "-"], check=True, text=True,
                       input="table inet t {\n chain i {\n type filter hook input priority 0;"
                             "\n udp dport 4790 drop\n }\n}\n")
        tunnels = [Tunnel(o, k, f"{run_id}-s{k}", state) for k in range(3)]
        for t in tunnels:
            t.create({})
        seen: list[set[str]] = [set()] * 3

        def probe(k: int) -> None:
            seen[k] = tunnels[k].probe(2.0)

        threads = [threading.Thread(target=probe, args=(k,)) for k in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert seen == [{"b", "c"}, {"a", "c"}, set()]  # c hears nobody, all hear c
        problems = unreachable_pairs(o, seen)
        assert len(problems) == 2 and all("(a → c lost)" in p or "(b → c lost)" in p
                                          for p in problems), problems
    finally:
        assert state.remove_all() == []
    assert not left_by(before, [run_id, *(f"{run_id}-s{k}" for k in range(3))])


# -- a lab over three emulated lab hosts -------------------------------------------------


@pytest.fixture(scope="module")
def before(root: None) -> Snapshot:
    return snapshot()


@pytest.fixture(scope="module")
def session(image: Image, before: Snapshot, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Session]:
    with lab_session(tmp_path_factory.mktemp("overlay"), guests=str(N),
                     cluster="local:3") as s:
        yield s


@pytest.fixture(scope="module")
def lab(session: Session) -> Iterator[ClusterLab]:
    lab = session.lab_up(N)
    assert isinstance(lab, ClusterLab)
    yield lab
    assert lab.stop() == []


def _by_host(lab: ClusterLab) -> list[list[str]]:
    return [h.names for h in lab.shards]


def _underlay_bytes(lab: ClusterLab) -> list[int]:
    """Bytes each emulated lab host sent into the underlay bridge (its veth's far end)."""
    o = lab.overlay
    assert o is not None
    out = []
    for end in o.underlay_links:
        text = subprocess.run(["ip", "-n", o.underlay_netns, "-j", "-s", "link", "show", end],
                              capture_output=True, text=True, check=True).stdout
        out.append(int(json.loads(text)[0]["stats64"]["rx"]["bytes"]))
    return out


@pytest.mark.integration
def test_one_subnet_one_vni_in_run_json(lab: ClusterLab, session: Session) -> None:
    info = json.loads((session.run_dir / "run.json").read_text())["cluster"]
    o = info["overlay"]
    assert (o["kind"], o["port"], o["mtu"], o["underlay_mtu"]) == ("vxlan", 4789, 1450, 1500)
    assert o["vni"] == vxlan.vni_for(lab.run_id)
    assert sorted(o["underlay"].values()) == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    net = ipaddress.IPv4Network(o["subnet"])
    for shard, block in zip(info["shards"], o["blocks"].values(), strict=True):
        assert shard["subnet"] == block
    for g in lab.guests:
        assert g.spec.ip.network == net  # every guest on one link
        out = run_ok(lab, g.name, "cat /sys/class/net/eth0/mtu")
        assert out.strip() == "1450"


DATAGRAM = """
import socket, sys
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)  # DF: never fragmented
for n in (1422, 1423):
    try:
        s.sendto(b"x" * n, (sys.argv[1], int(sys.argv[2])))
        print(n, "sent")
    except OSError as exc:
        print(n, exc.errno)
"""
RECEIVE = ("python3 -c \"import socket; s = socket.socket(2, 2); s.bind(('', {port})); "
           "s.settimeout(5); print(len(s.recv(65535)))\"")


@pytest.mark.integration
def test_a_full_size_packet_crosses_the_tunnel(lab: ClusterLab) -> None:
    """A 1450-byte IP packet with DF set (1422 bytes of UDP payload) goes from lab host 0
    to lab host 2 whole; one byte more is refused by the sender, not lost on the way."""
    src, dst = _by_host(lab)[0][0], _by_host(lab)[2][0]
    fleet = lab.require_fleet()
    address = fleet.guests[dst].spec.address
    got: dict[str, str] = {}
    t = threading.Thread(target=lambda: got.update(out=run_ok(lab, dst, RECEIVE.format(
        port=PORT))))
    t.start()
    sent = ""
    for _ in range(20):  # until the receiver listens
        sent = run_ok(lab, src, f"cat > /tmp/dg.py <<'EOF'\n{DATAGRAM}\nEOF\n"
                      f"python3 /tmp/dg.py {address} {PORT}; sleep 0.2")
        if not t.is_alive():
            break
    t.join()
    assert got["out"].strip() == "1422"
    assert "1422 sent" in sent and "1423 90" in sent  # EMSGSIZE: over the path MTU


TRANSFER = """
import socket, sys, time
if sys.argv[1] == "serve":
    srv = socket.create_server(("", int(sys.argv[2])))
    c, _ = srv.accept(); n = 0
    while (b := c.recv(1 << 16)):
        n += len(b)
    print(n)
else:
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10)
    s.sendall(b"x" * int(sys.argv[4])); s.close()
"""


@pytest.mark.integration
def test_tcp_transfer_across_lab_hosts_is_encapsulated(lab: ClusterLab) -> None:
    """8 MiB from a guest of lab host 0 to one of lab host 1: all of it arrives, and the
    tunnel's and the underlay's counters grew by at least that much."""
    size = 8 << 20
    src, dst = _by_host(lab)[0][1], _by_host(lab)[1][1]
    fleet = lab.require_fleet()
    tunnel0 = lab.shards[0].counters()
    under0 = _underlay_bytes(lab)
    out: dict[str, str] = {}
    script = f"cat > /tmp/tr.py <<'EOF'\n{TRANSFER}\nEOF\n"
    t = threading.Thread(target=lambda: out.update(
        n=run_ok(lab, dst, script + f"timeout 30 python3 /tmp/tr.py serve {PORT + 1}")))
    t.start()
    address = fleet.guests[dst].spec.address
    run_ok(lab, src, script + f"for i in $(seq 50); do python3 /tmp/tr.py send {address} "
           f"{PORT + 1} {size} 2>/dev/null && exit 0; sleep 0.1; done; exit 1")
    t.join()
    assert int(out["n"]) == size
    tunnel1 = lab.shards[0].counters()
    under1 = _underlay_bytes(lab)
    assert tunnel1["tx_bytes"] - tunnel0["tx_bytes"] >= size
    # Encapsulated: what left host 0 on the underlay is the payload plus headers.
    assert under1[0] - under0[0] >= size
    assert under1[2] - under0[2] < size // 100  # host 2 had no part in it


def _reaches(lab: ClusterLab, src: str, dst: str) -> bool:
    address = lab.require_fleet().guests[dst].spec.address
    res = lab.require_fleet().run(
        f"python3 -c \"import socket; socket.create_connection(('{address}', 22), timeout=2)\"",
        names=[src])[src]
    return bool(res.exit_status == 0)


@pytest.mark.integration
def test_partition_across_lab_hosts_cuts_and_heals(lab: ClusterLab) -> None:
    hosts = _by_host(lab)
    guests = lab.require_fleet().guests
    a, b, c = hosts[0][0], hosts[1][0], hosts[2][0]
    inject(lab.backend, "partition", [guests[a]], others=[guests[b]])
    try:
        assert not _reaches(lab, a, b) and not _reaches(lab, b, a)
        assert _reaches(lab, a, c) and _reaches(lab, b, c) and _reaches(lab, a, hosts[1][1])
        tables = subprocess.run(["nft", "list", "tables", "bridge"], capture_output=True,
                                text=True).stdout
        # On both lab hosts of the two sides, not on the third.
        cut = [f"slq-{run_tag(h.run_id)}" in tables for h in lab.shards]
        assert cut == [True, True, False]
    finally:
        inject(lab.backend, "heal", [])
    assert _reaches(lab, a, b) and _reaches(lab, b, a)


@pytest.mark.integration
def test_isolate_a_guest_on_another_lab_host(lab: ClusterLab) -> None:
    hosts = _by_host(lab)
    guests = lab.require_fleet().guests
    far = hosts[2][1]
    inject(lab.backend, "isolate", [guests[far]])
    try:
        assert not _reaches(lab, hosts[0][0], far) and not _reaches(lab, hosts[1][0], far)
    finally:
        inject(lab.backend, "heal", [])
    assert _reaches(lab, hosts[0][0], far)


@pytest.mark.integration
def test_nothing_left(lab: ClusterLab, before: Snapshot) -> None:
    """Last: the lab down, no namespace, link, forwarding entry or table of it is left."""
    o = lab.overlay
    assert o is not None
    devices = [vxlan.device_name(run_tag(h.run_id)) for h in lab.shards]
    assert all(vxlan.fdb_entries(d) for d in devices)
    assert lab.stop() == []
    left = left_by(before, [lab.run_id, *(h.run_id for h in lab.shards)])
    assert not left, left
    for d in devices:
        assert not Path(f"/sys/class/net/{d}").exists()
    names = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert o.underlay_netns not in names and not any(h in names for h in o.host_netns)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "slq-" + run_tag(lab.shards[0].run_id) not in tables
