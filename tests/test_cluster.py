"""Cluster labs (``--cluster``): placement, identities across lab hosts, fan-out on shards,
a lab host lost mid-run, teardown on every exit, bad input — with real Dask workers.

The integration tests run ``pytest scenarios/... --cluster=local:3`` in a subprocess, as a
user would, and check the run directory and that nothing is left on this host.  They mark
every process they start (an environment variable the Dask workers inherit) so that a
worker or scheduler left running is found.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.cli import one_clear_line, scalelab, ssh_answers
from leaks import PROJECT, Snapshot, snapshot

from harness.backends.base import Guest, Jump
from harness.cluster.plan import (
    LabWorker,
    allocate_subnets,
    check_identities,
    clock_offset,
    lab_host_names,
    parse_cluster,
    place,
)
from harness.cluster.wire import Upload, dumps_function, loads_function
from harness.config import MAX_GUESTS
from harness.errors import LabError, UserError
from harness.faultcli import shard_parts
from harness.identity import make_specs, run_tag
from harness.image.cache import Image
from harness.runs import Run, find_run, labs_holding
from harness.ssh import write_exports

MARK = "SCALELAB_TEST_MARK"

# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [("local:0", "at least one worker"), ("local:x", "not a whole number"),
     ("local:-1", "at least one"), ("bogus", "give local:K"), ("tcp://host", "give local:K"),
     ("http://h:1", "give local:K")],
)
def test_parse_cluster_refuses(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        parse_cluster(text)


def test_parse_cluster_accepts() -> None:
    assert parse_cluster("local:3").local_workers == 3
    spec = parse_cluster("tcp://sched.example:8786")
    assert not spec.local and spec.address == "tcp://sched.example:8786"
    assert parse_cluster("tls://10.0.0.1:8786/").address == "tls://10.0.0.1:8786"


def _workers(*caps: int | None) -> list[LabWorker]:
    return [LabWorker(f"tcp://10.0.0.{i}:1234", c) for i, c in enumerate(caps)]


def test_place_even_split() -> None:
    assert [c for _, c in place(24, _workers(None, None, None))] == [8, 8, 8]
    assert [c for _, c in place(10, _workers(None, None, None))] == [4, 3, 3]
    assert [c for _, c in place(2, _workers(None, None, None))] == [1, 1]  # third unused


def test_place_weighted_and_capped() -> None:
    # Every host declares a capacity: the split follows them (a small host may get none).
    assert [c for _, c in place(30, _workers(256, 128, 128))] == [15, 8, 7]
    assert [c for _, c in place(12, _workers(2, 100, 100))] == [6, 6]
    # Some do not: an even split, a declared capacity a ceiling, the rest to the others.
    assert [c for _, c in place(12, _workers(2, None, None))] == [2, 5, 5]


def test_place_refuses_more_than_the_hosts_hold() -> None:
    with pytest.raises(UserError, match="hold at most 5"):
        place(6, _workers(2, 3))
    with pytest.raises(UserError, match=f"hold at most {2 * MAX_GUESTS}"):
        place(2 * MAX_GUESTS + 1, _workers(None, None))
    with pytest.raises(UserError, match="no lab host"):
        place(1, [])


def test_lab_host_names() -> None:
    assert lab_host_names(["a", "b"]) == ["a", "b"]
    assert lab_host_names(["vm", "vm", "x", "vm"]) == ["vm-w0", "vm-w1", "x", "vm-w2"]


def test_subnets_disjoint_and_clear_of_routes() -> None:
    routes = [ipaddress.IPv4Network("10.213.0.0/24"), ipaddress.IPv4Network("10.213.2.0/23")]
    nets = allocate_subnets([8, 8, 300], routes)
    assert all(n.prefixlen == 23 for n in nets)
    for i, a in enumerate(nets):
        assert not any(a.overlaps(r) for r in routes)
        assert not any(a.overlaps(b) for b in nets[i + 1:])
    split = allocate_subnets([8, 8, 8], [], "10.50.0.0/22")
    assert [str(n) for n in split] == ["10.50.0.0/24", "10.50.1.0/24", "10.50.2.0/24"]
    with pytest.raises(UserError, match="room for 1 of the 3"):
        allocate_subnets([8, 8, 8], [], "10.50.0.0/24")
    with pytest.raises(UserError, match="too small"):
        allocate_subnets([300], [], "10.50.0.0/24")
    with pytest.raises(UserError, match="overlaps the host route"):
        allocate_subnets([8], routes, "10.213.0.0/16")


def test_identity_check_across_shards_names_duplicates() -> None:
    a = make_specs("run-s0", 2, ipaddress.IPv4Network("10.1.0.0/24"), prefix="s0g")
    b = make_specs("run-s1", 2, ipaddress.IPv4Network("10.1.0.0/24"), prefix="s1g")
    rows = [{"name": s.name, "mac": s.mac, "ip": s.address, "machine_id": s.machine_id,
             "host_key": s.host_key.public_blob, "lab_host": h}
            for h, specs in (("h0", a), ("h1", b)) for s in specs]
    with pytest.raises(LabError, match=r"IP 10\.1\.0\.2 shared by s0g000@h0, s1g000@h1"):
        check_identities(rows)
    rows[2]["ip"], rows[3]["ip"] = "10.1.1.2", "10.1.1.3"
    check_identities(rows)  # names, MACs (other run ids), keys and IPs now all differ


def test_clock_offset_is_the_median_ntp_estimate() -> None:
    # The shard's clock runs 5 ms ahead; one probe is delayed on the way back.
    samples = [(0, 5_500_000, 1_000_000), (10_000_000, 15_500_000, 11_000_000),
               (20_000_000, 25_500_000, 41_000_000)]
    offset, trip = clock_offset(samples)
    assert offset == pytest.approx(0.005)
    assert trip == pytest.approx(0.001)


def test_upload_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "agent"
    (src / "lib" / "empty").mkdir(parents=True)
    (src / "run.py").write_text("print(1)\n")
    (src / "run.py").chmod(0o755)
    (src / "lib" / "data.bin").write_bytes(bytes(range(256)))
    out = tmp_path / "out"
    out.mkdir()
    top = Upload.read(src).write(out)
    assert (top / "run.py").read_text() == "print(1)\n"
    assert (top / "run.py").stat().st_mode & 0o777 == 0o755
    assert (top / "lib" / "data.bin").read_bytes() == bytes(range(256))
    assert (top / "lib" / "empty").is_dir()


def _local_helper(name: str) -> str:
    return name[::-1]


def test_functions_from_test_modules_travel_by_value() -> None:
    def func(name: str, client: object) -> str:
        return _local_helper(name)

    blob = dumps_function(func)
    code = "import sys, pickle; f = pickle.loads(sys.stdin.buffer.read()); print(f('abc', None))"
    # A fresh interpreter where this test module is not importable.
    res = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                         cwd="/", timeout=60)
    assert res.stdout.decode().strip() == "cba", res.stderr.decode()
    assert loads_function(blob)("xy", None) == "yx"


def test_exports_jump_through_remote_lab_hosts(tmp_path: Path) -> None:
    specs = make_specs("r-s0", 2, ipaddress.IPv4Network("10.9.0.0/24"), prefix="s0g")
    jump = Jump("192.0.2.7", 22, "root", "192.0.2.7 ssh-ed25519 AAAAlabhost")
    guests = [Guest(specs[0], specs[0].address, lab_host="here"),
              Guest(specs[1], specs[1].address, jump=jump, lab_host="there")]
    cfg, known = write_exports(tmp_path, [(guests, tmp_path / "id")])
    text = cfg.read_text()
    assert text.index("Host labhost-192.0.2.7-22") < text.index("Host *")
    assert "ProxyJump labhost-192.0.2.7-22" in text.split("Host s0g001")[1]
    assert "ProxyJump" not in text.split("Host s0g000")[1].split("Host s0g001")[0]
    assert "192.0.2.7 ssh-ed25519 AAAAlabhost" in known.read_text()
    jump_block = text.split("Host labhost-192.0.2.7-22")[1].split("Host ")[0]
    assert "IdentitiesOnly no" in jump_block and "IdentityFile" not in jump_block
    # A jump host with its own login key (xen's remote dom0 with key=) gets that key only.
    keyed = Jump("192.0.2.8", 2222, "admin", "[192.0.2.8]:2222 ssh-ed25519 AAAAdom0",
                 identity_file=str(tmp_path / "dom0_key"))
    cfg, _ = write_exports(tmp_path, [([Guest(specs[1], specs[1].address, jump=keyed)],
                                        tmp_path / "id")])
    jump_block = cfg.read_text().split("Host labhost-192.0.2.8-2222")[1].split("Host ")[0]
    assert f"IdentityFile {tmp_path / 'dom0_key'}" in jump_block
    assert "IdentitiesOnly yes" in jump_block and "User admin" in jump_block


def test_dask_is_not_imported_without_cluster() -> None:
    code = ("import sys; import harness.plugin, harness.session, harness.cli, "
            "harness.cluster, harness.cluster.cleanup; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=PROJECT)
    assert res.stdout.strip() == "[]", res.stderr


# -- helpers for the integration tests ----------------------------------------------------


def _env(mark: str) -> dict[str, str]:
    return {**os.environ, MARK: mark}


def marked_processes(mark: str) -> list[str]:
    """Python processes (Dask schedulers and workers among them) started under ``mark``
    (guests inherit the mark too, and are checked apart)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not Path(argv[0].decode()).name.startswith(("python", "dask")):
                continue
            if f"{MARK}={mark}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(f"{proc.name} {b' '.join(argv)[:120]!r}")
        except (OSError, UnicodeDecodeError):
            continue
    return found


def run_ids_in(reports: Path) -> set[str]:
    """Every run id of the runs under ``reports``: the runs, their side labs and shards."""
    ids = set()
    for f in reports.rglob("guests.json"):
        ids.add(json.loads(f.read_text())["run_id"])
    for f in reports.glob("2*/run.json"):
        ids.add(json.loads(f.read_text())["run_id"])
    return ids


def _proc_in_runs(pid: str, ids: set[str]) -> bool:
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return any(i in cgroups for i in ids)


def leftovers(before: Snapshot, reports: Path, mark: str) -> dict[str, set[str]]:
    """What the runs under ``reports`` left on this host (other people's labs ignored)."""
    ids = run_ids_in(reports)
    needles = ids | {run_tag(i) for i in ids}
    left: dict[str, set[str]] = {}
    for kind, items in before.diff(snapshot()).items():
        if kind == "procs":
            mine = {p for p in items if _proc_in_runs(p, ids)}
        else:
            mine = {x for x in items if any(n in x for n in needles)}
        if mine:
            left[kind] = mine
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    nft = {t for t in tables.splitlines()
           if any(f"{p}-{run_tag(i)}" in t for i in ids for p in ("slf", "slq"))}
    if nft:
        left["nft"] = nft
    procs = set(marked_processes(mark))
    if procs:
        left["dask processes"] = procs
    return left


def wait_clean(before: Snapshot, reports: Path, mark: str, timeout: float = 30) -> None:
    """Nothing left (Dask workers may take a moment to exit after their client)."""
    deadline = time.monotonic() + timeout
    while (left := leftovers(before, reports, mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left behind: {left}"


def pytest_run(reports: Path, mark: str, *args: str, timeout: float = 900
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args, f"--reports-dir={reports}",
         "-p", "no:cacheprovider", "-q"],
        cwd=PROJECT, capture_output=True, text=True, timeout=timeout, env=_env(mark),
    )


def cli(mark: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``scalelab ARGS`` with this test's mark in its environment (and its workers')."""
    return scalelab(*args, timeout=timeout, env={MARK: mark})


@pytest.fixture
def mark() -> str:
    return uuid.uuid4().hex


# -- end to end -----------------------------------------------------------------------------


@pytest.mark.integration
def test_24_guests_over_3_lab_hosts(image: Image, tmp_path: Path, mark: str) -> None:
    before = snapshot()
    res = pytest_run(tmp_path, mark, "scenarios/test_ssh_fanout.py",
                     "scenarios/test_client_server.py", "scenarios/test_network.py",
                     "--guests=24", "--cluster=local:3")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = (tmp_path / "latest").resolve()
    info = json.loads((run / "run.json").read_text())
    shards = info["cluster"]["shards"]
    hosts = {s["lab_host"] for s in shards}
    assert len(hosts) == 3 and [s["guests"] for s in shards] == [8, 8, 8]
    assert info["backend"]["name"] == "netns" and info["guests_up"] == 24
    assert set(info["clock_offsets"]) == hosts
    assert all(abs(v) < 0.5 for v in info["clock_offsets"].values())

    t = pd.read_parquet(run / "timings.parquet")
    boot = t[(t["phase"] == "bringup") & (t["scenario"] == "bringup")]
    # Every guest went through the same bring-up steps, ending authenticated and answering.
    kinds = {tuple(sorted(map(str, ops))) for _, ops in boot.groupby("guest")["op"]}
    assert len(kinds) == 1 and {"auth", "first_command"} <= set(next(iter(kinds))), kinds
    assert boot.groupby("lab_host")["guest"].nunique().to_dict() == dict.fromkeys(hosts, 8)
    rt = t[t["op"] == "roundtrip"]
    assert rt["ok"].all() and rt.groupby("guest").size().eq(10).all()
    assert rt.groupby("lab_host")["guest"].nunique().to_dict() == dict.fromkeys(hosts, 8)
    # One guest per shard prefix, and every guest on the lab host its name says.
    assert all(g[:2] == f"s{sorted(hosts).index(h)}" for g, h in
               rt[["guest", "lab_host"]].drop_duplicates().itertuples(index=False))
    m = pd.read_parquet(run / "metrics.parquet")
    lat = m[m["metric"] == "request_latency"]
    assert lat["guest"].nunique() == 23 and set(lat["lab_host"]) == hosts  # across hosts
    # Guest-to-guest transfers over one lab network: streams cross the tunnels too.
    sent = m[m["metric"] == "transfer_throughput"]
    assert sent["guest"].nunique() >= 12 and (sent["value"] > 0).all()
    assert t[t["op"] == "transfer"]["ok"].all()
    overlay = info["cluster"]["overlay"]
    assert overlay["kind"] == "vxlan" and len(overlay["underlay"]) == 3
    check_samples_per_lab_host(pd.read_parquet(run / "samples.parquet"), t, hosts)

    inventory = json.loads((run / "guests.json").read_text())["guests"]
    assert len(inventory) == 24
    for key in ("name", "mac", "ip"):
        assert len({g[key] for g in inventory}) == 24, key
    keys = [ln.split()[2] for ln in (run / "known_hosts").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 24
    assert not (run / "id_ed25519").exists()
    wait_clean(before, tmp_path, mark)


def check_samples_per_lab_host(s: pd.DataFrame, t: pd.DataFrame, hosts: set[str]) -> None:
    """Each lab host sampled itself and its own guests; the rows carry it, and their times,
    put on the run's clock, fall inside the run; a sender's link carried its 8 MiB."""
    host_rows = s[(s["guest"] == "") & (s["resource"] == "cpu_busy_seconds")]
    assert set(host_rows["lab_host"]) == hosts | {""}
    guest_rows = s[s["guest"] != ""]
    placed = t[t["scenario"] == "bringup"][["guest", "lab_host"]].drop_duplicates()
    where: dict[str, str] = dict(placed.itertuples(index=False))
    assert guest_rows["guest"].nunique() == 24
    assert all(where[g] == h for g, h in
               guest_rows[["guest", "lab_host"]].drop_duplicates().itertuples(index=False))
    first, last = t["start"].min(), t["end"].max()
    stamps = pd.to_datetime(s[s["lab_host"] != ""]["t"], utc=True)
    assert stamps.min() >= first - pd.Timedelta(seconds=2), (stamps.min(), first)
    assert stamps.max() <= last + pd.Timedelta(seconds=5), (stamps.max(), last)
    senders = set(t[(t["op"] == "transfer") & t["ok"]]["guest"])
    tx = guest_rows[guest_rows["resource"] == "net_tx_bytes"].groupby("guest")["value"]
    grown = (tx.max() - tx.min()).to_dict()
    assert senders and all(grown[g] >= 8 << 20 for g in senders), grown


LOSE_A_HOST = """
import os, signal

import pytest
from harness.quorum import check_quorum


@pytest.mark.quorum(0.6)
def test_a_lab_host_dies(lab, fleet, quorum):
    assert fleet.run("true").ok
    victim = lab.shards[-1]
    os.kill(victim.pid(), signal.SIGKILL)
    group = fleet.run("hostname", timeout=60)
    assert group.failed == dict.fromkeys(victim.names, "lost")
    check_quorum(group, quorum)
    print("VICTIM", victim.lab_host, victim.run_id, flush=True)


def test_the_run_goes_on(lab, fleet):
    assert len(fleet.names) == len(lab.guests) - len(lab.shards[-1].names)
    group = fleet.run("hostname")
    assert group.ok and len(group) == len(fleet.names)
"""


@pytest.mark.integration
def test_a_lost_lab_host(image: Image, tmp_path: Path, mark: str) -> None:
    before = snapshot()
    scenario = tmp_path / "scenario" / "test_lose_a_host.py"
    scenario.parent.mkdir()
    scenario.write_text(LOSE_A_HOST)
    reports = tmp_path / "reports"
    res = pytest_run(reports, mark, str(scenario), "-s", "--guests=12", "--cluster=local:3")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    victim_host, victim_run = next(
        ln.split()[1:3] for ln in res.stdout.splitlines() if ln.startswith("VICTIM")
    )
    run = (reports / "latest").resolve()
    t = pd.read_parquet(run / "timings.parquet")
    lost = t[t["phase"] == "lost"]
    assert lost["guest"].nunique() == 4 and set(lost["lab_host"]) == {victim_host}
    assert (lost["error_class"] == "lost").all()
    assert "2 passed" in res.stdout  # the second test ran after the loss, on 8 guests
    out = cli(mark, "clean", victim_run)
    assert out.returncode == 0, out.stderr
    wait_clean(before, reports, mark)


SLEEPER = """
import time
from pathlib import Path


def test_wait_for_a_signal(fleet):
    assert fleet.run("true").ok
    Path({marker!r}).write_text("up")
    time.sleep(300)
"""


@pytest.mark.integration
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_teardown_on_signal(how: str, image: Image, tmp_path: Path, mark: str) -> None:
    before = snapshot()
    marker = tmp_path / "up"
    scenario = tmp_path / "scenario" / "test_sleeper.py"
    scenario.parent.mkdir()
    scenario.write_text(SLEEPER.format(marker=str(marker)))
    reports = tmp_path / "reports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(scenario), f"--reports-dir={reports}",
         "-p", "no:cacheprovider", "-q", "--guests=6", "--cluster=local:3"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(mark), start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout
            time.sleep(0.2)
        assert run_ids_in(reports)  # the lab is up, shards and all
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:  # what a terminal does on Ctrl-C: the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out[-2000:]
    wait_clean(before, reports, mark)


@pytest.mark.integration
def test_up_ssh_down(image: Image, tmp_path: Path, mark: str) -> None:
    """``scalelab up --cluster``: a person reaches guests of every lab host; down removes all."""
    before = snapshot()
    res = cli(mark, "up", "--guests", "4", "--cluster", "local:2",
                   "--reports-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    run = (tmp_path / "latest").resolve()
    try:
        for name in ("s0g000", "s1g001"):
            out = subprocess.run(["ssh", "-F", str(run / "ssh_config"), name, "hostname"],
                                 capture_output=True, text=True, timeout=60)
            assert out.stdout.strip() == name, out.stderr
        assert not marked_processes(mark)  # the workers are gone, the guests are not
    finally:
        down = cli(mark, "down", run.name)
    assert down.returncode == 0, down.stderr
    wait_clean(before, tmp_path, mark)


def by_host_of(guests: list[dict[str, str]], name: str) -> str:
    return next(g["lab_host"] for g in guests if g["name"] == name)


@pytest.mark.integration
def test_faults_by_hand_on_a_kept_cluster_lab(image: Image, tmp_path: Path, mark: str) -> None:
    """``scalelab fault`` on a kept lab over 2 lab hosts: each guest named is reached through
    the shard holding it (its workers are gone), the faults are rows of the run, ``heal``
    mends every shard, ``scalelab top`` lists the guests of both; what cannot be done across
    lab hosts is a one-line error that changes nothing."""
    before = snapshot()
    res = cli(mark, "up", "--guests", "4", "--cluster", "local:2", "--reports-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    run = (tmp_path / "latest").resolve()
    try:
        guests = json.loads((run / "guests.json").read_text())["guests"]
        by_host: dict[str, list[str]] = {}
        for g in guests:
            by_host.setdefault(g["lab_host"], []).append(g["name"])
        assert len(by_host) == 2
        (a, a2), (b, b2) = sorted(by_host.values())
        cfg = run / "ssh_config"

        def fault(*argv: str) -> subprocess.CompletedProcess[str]:
            return cli(mark, "fault", *argv, "--run", run.name)

        assert fault("pause", a, b).returncode == 0
        assert not ssh_answers(cfg, a) and not ssh_answers(cfg, b) and ssh_answers(cfg, a2)
        assert fault("resume", a, b).returncode == 0
        assert ssh_answers(cfg, a) and ssh_answers(cfg, b)
        assert fault("isolate", a, b2).returncode == 0
        assert not ssh_answers(cfg, a) and not ssh_answers(cfg, b2) and ssh_answers(cfg, b)
        assert fault("heal").returncode == 0  # no guest named: every shard of the lab
        assert ssh_answers(cfg, a) and ssh_answers(cfg, b2)
        top = cli(mark, "top", run.name, "--interval", "0.2")
        assert top.returncode == 0, top.stderr
        assert {ln.split()[0] for ln in top.stdout.splitlines()[1:]} == {a, a2, b, b2}
        one_clear_line(fault("degrade", a, "--loss", "10%"), "--to")
        one_clear_line(fault("degrade", a, "--loss", "10%", "--to", b), "one lab host")
        assert fault("degrade", a, "--loss", "100%", "--to", a2).returncode == 0
        assert fault("restore", a).returncode == 0
        assert fault("kill", b).returncode == 0
        assert not ssh_answers(cfg, b) and ssh_answers(cfg, a)
        rows = [json.loads(ln) for ln in (run / "timings.jsonl").read_text().splitlines()]
        faults = {(r["op"], r["guest"]) for r in rows if r["phase"] == "fault"}
        assert {("pause", a), ("pause", b), ("isolate", a), ("isolate", b2), ("kill", b),
                ("degrade", a)} <= faults, faults
        assert {r["lab"] for r in rows if r["phase"] == "fault"} == {"default"}
        # As on another lab host: the client's lab is not there, only a shard of it, which
        # is then the lab; and the client's lab without its shards names where they are.
        whole = find_run(run.name)
        shard_of_b = [lab for lab in whole.labs if lab.is_shard and b2 in lab.guest_names()]
        assert labs_holding(Run(whole.run_id, tuple(shard_of_b)), [b2]) == [
            (shard_of_b[0], [b2])]
        client = Run(whole.run_id, tuple(lab for lab in whole.labs if not lab.is_shard))
        ((lab, mine),) = labs_holding(client, [b2])
        with pytest.raises(UserError, match=f"{b2} on {by_host_of(guests, b2)}"):
            shard_parts(client, lab, "pause", mine, None)
    finally:
        down = cli(mark, "down", run.name)
    assert down.returncode == 0, down.stderr
    wait_clean(before, tmp_path, mark)


@pytest.mark.integration
def test_clean_removes_the_lab_network(image: Image, tmp_path: Path, mark: str) -> None:
    """A kept lab over 3 emulated lab hosts: its VXLAN devices (with their forwarding
    entries), host and underlay namespaces are all journalled; `scalelab clean RUN` removes
    every one of them."""
    before = snapshot()
    res = cli(mark, "up", "--guests", "3", "--cluster", "local:3", "--reports-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    run = (tmp_path / "latest").resolve()
    overlay = json.loads((run / "run.json").read_text())["cluster"]["overlay"]
    assert overlay["kind"] == "vxlan" and len(overlay["underlay"]) == 3
    shards = [s["run_id"] for s in json.loads((run / "run.json").read_text())["cluster"]["shards"]]
    devices = [f"slx{run_tag(r)}" for r in shards]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert all(d in links for d in devices), links
    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert netns.count(f"slh-{run_tag(run.name)}-") == 3 and f"slul-{run_tag(run.name)}" in netns
    clean = cli(mark, "clean", run.name)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "removed" in clean.stdout
    wait_clean(before, tmp_path, mark)


@pytest.mark.integration
def test_nginx_on_one_lab_host_loaded_from_another(image: Image, tmp_path: Path,
                                                   mark: str) -> None:
    """The nginx/wrk scenario, unchanged, over 2 lab hosts: wrk on the far host reaches the
    server across the tunnel."""
    before = snapshot()
    res = pytest_run(tmp_path, mark, "scenarios/test_web_load.py", "--guests=4",
                     "--cluster=local:2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = (tmp_path / "latest").resolve()
    t = pd.read_parquet(run / "timings.parquet")
    (server_host,) = set(t[t["op"] == "nginx_ready"]["lab_host"])
    m = pd.read_parquet(run / "metrics.parquet")
    rate = m[m["metric"] == "wrk_request_rate"]
    far = rate[rate["lab_host"] != server_host]
    assert len(far) >= 1 and (far["value"] > 0).all(), rate
    wait_clean(before, tmp_path, mark)


# -- bad input: one clear line, nothing left -------------------------------------------------


def _nothing_made(reports: Path, mark: str) -> None:
    assert not run_ids_in(reports)
    states = Path("/run/scalelab")
    for d in states.iterdir() if states.is_dir() else []:
        journal = d / "state.jsonl"
        if journal.is_file():
            assert str(reports) not in journal.read_text(), d
    deadline = time.monotonic() + 30
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not marked_processes(mark)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("cluster", "guests", "needles"),
    [("local:0", "4", ["at least one worker"]),
     ("local", "4", ["give local:K"]),
     ("local:2", "4,8", ["not a sweep"])],
)
def test_bad_cluster_option(cluster: str, guests: str, needles: list[str], image: Image,
                            tmp_path: Path, mark: str) -> None:
    res = cli(mark, "up", "--guests", guests, "--cluster", cluster,
                   "--reports-dir", str(tmp_path))
    one_clear_line(res, *needles)
    _nothing_made(tmp_path, mark)


@pytest.mark.integration
def test_scheduler_that_does_not_answer(tmp_path: Path, mark: str) -> None:
    t0 = time.monotonic()
    res = cli(mark, "up", "--guests", "4", "--cluster", "tcp://127.0.0.1:9",
                   "--reports-dir", str(tmp_path))
    assert time.monotonic() - t0 < 40
    one_clear_line(res, "tcp://127.0.0.1:9", "did not answer within 10 s")
    _nothing_made(tmp_path, mark)


@pytest.mark.integration
def test_pytest_refuses_local_0(tmp_path: Path, mark: str) -> None:
    res = pytest_run(tmp_path, mark, "scenarios/test_ssh_fanout.py", "--cluster=local:0")
    assert res.returncode == 4  # usage error
    assert "at least one worker" in res.stdout + res.stderr
    _nothing_made(tmp_path, mark)


class DaskScheduler:
    """A real scheduler on a free local port, and workers started as asked; all stopped.

    Its directory is outside pytest's (which only root may enter): workers run as nobody.
    """

    def __init__(self, mark: str) -> None:
        from distributed import Client

        self.tmp = Path(tempfile.mkdtemp(prefix="scalelab-test-dask-"))
        self.tmp.chmod(0o777)
        self.mark = mark
        self.procs: list[subprocess.Popen[bytes]] = []
        file = self.tmp / "scheduler.json"
        self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(file)])
        deadline = time.monotonic() + 120
        while not file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        time.sleep(0.2)
        self.address = json.loads(file.read_text())["address"]
        self.client = Client(  # type: ignore[no-untyped-call]
            self.address, timeout=60, set_as_default=False
        )

    def _start(self, args: list[str], user: str | None = None,
               env: dict[str, str] | None = None) -> None:
        argv = [str(Path(sys.executable).parent / "dask"), *args]
        if user:
            # Not root, but allowed to read the checkout and its .venv, which may sit in a
            # directory only root may enter (a fresh clone in a 0700 directory).
            argv = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups",
                    "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *argv]
        self.procs.append(subprocess.Popen(
            argv, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**_env(self.mark), **(env or {})},
        ))

    def worker(self, resources: str, user: str | None = None,
               env: dict[str, str] | None = None) -> None:
        n = len(self.client.scheduler_info(n_workers=-1)["workers"])
        self._start(["worker", self.address, "--no-nanny", "--nthreads", "1",
                     "--no-dashboard", "--resources", resources,
                     "--local-directory", str(self.tmp)], user, env)
        self.client.wait_for_workers(n + 1, timeout=120)

    def stop(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def scheduler(mark: str) -> Iterator[DaskScheduler]:
    s = DaskScheduler(mark)
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("resources", "user", "env", "guests", "needles"),
    [
        ("lab=1", "65534", {}, "2", ["runs its Dask worker as uid 65534, not root"]),
        ("lab=1", None, {"SCALELAB_CACHE": "/nonexistent/scalelab"}, "2",
         ["has no usable image", "scalelab image build"]),
        ("lab=1,guests=2", None, {}, "4", ["4 guests asked", "hold at most 2"]),
        ("other=1", None, {}, "2", ["no worker", "is a lab host", "--resources lab=1"]),
    ],
    ids=["not-root", "no-image", "too-many-guests", "no-lab-host"],
)
def test_bad_lab_hosts(resources: str, user: str | None, env: dict[str, str], guests: str,
                       needles: list[str], scheduler: DaskScheduler, image: Image,
                       tmp_path: Path, mark: str) -> None:
    scheduler.worker(resources, user, env)
    reports = tmp_path / "reports"
    res = cli(mark, "up", "--guests", guests, "--cluster", scheduler.address,
                   "--reports-dir", str(reports))
    one_clear_line(res, *needles)
    assert not run_ids_in(reports)
    states = Path("/run/scalelab")
    for d in states.iterdir() if states.is_dir() else []:
        journal = d / "state.jsonl"
        if journal.is_file():
            assert str(reports) not in journal.read_text(), d
