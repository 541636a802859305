"""The qemu backend for real: TCG VMs booting the shared image, pinned SSH, cleanup."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from helpers.labs import lab_session, run_ok
from helpers.samples import growth, sampled_after
from leaks import PROJECT, Snapshot, snapshot

from harness.backends import load_backend, parse_backend
from harness.backends.base import Guest
from harness.backends.qemu import QemuBackend, qmp
from harness.config import build_config
from harness.errors import LabError, UserError
from harness.faults import Nemesis
from harness.identity import run_tag
from harness.image.build import sha256_file
from harness.image.cache import Image
from harness.image.ensure import ensure_image
from harness.lab import Lab
from harness.report import render_report
from harness.session import Session
from harness.state import STATE_ROOT, list_states, process_alive
from harness.workloads import REMOTE_DIR, Agents, roundtrip

pytestmark = pytest.mark.vm
N = 2


@pytest.fixture(scope="module")
def session(vm_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with lab_session(tmp_path_factory.mktemp("reports"), guests=str(N),
                     backend="qemu://?accel=tcg") as s:
        yield s


@pytest.fixture(scope="module")
def lab(session: Session, vm_image: Image) -> Iterator[Lab]:
    digest_before = sha256_file(vm_image.path)
    lab = session.lab_up(N)
    yield lab
    lab.stop()
    assert sha256_file(vm_image.path) == digest_before, "a VM wrote into the shared image"
    assert sha256_file(vm_image.path) == vm_image.digest


def qemu_of(lab: Lab) -> QemuBackend:
    """The lab's backend as what it is (its fault hooks are QemuBackend's)."""
    assert isinstance(lab.backend, QemuBackend)
    return lab.backend


def ours(before: Snapshot, *run_ids: str) -> dict[str, set[str]]:
    """What appeared since ``before`` and belongs to these runs (their journal, bridge and
    taps, named by run id or run tag).  Other people's labs on a shared host are ignored."""
    marks = [m for r in run_ids for m in (r, run_tag(r))]
    left = {kind: {v for v in new if any(m in v for m in marks)}
            for kind, new in before.diff(snapshot()).items()}
    return {kind: vs for kind, vs in left.items() if vs}


def test_identity_inside_each_vm(lab: Lab) -> None:
    for g in lab.guests:
        out = run_ok(lab, g.name, "hostname; cat /sys/class/net/eth0/address; "
                   "ip -4 -o addr show eth0; cat /etc/machine-id; "
                   "cat /etc/ssh/ssh_host_ed25519_key.pub")
        hostname, mac, addr, machine_id, pub = out.strip().splitlines()
        assert hostname == g.name
        assert mac == g.spec.mac
        assert f"inet {g.spec.ip} " in addr
        assert machine_id == g.spec.machine_id
        # The key the guest serves is the one pinned before boot (the harness connected
        # with RejectPolicy, so it already proved this; here it is read back directly).
        assert pub.split()[:2] == g.spec.host_key.public_openssh.split()[:2]


def test_vm_runs_on_the_lab_bridge_with_tcg(lab: Lab) -> None:
    d = lab.backend.describe()
    assert d["accel"] == "tcg" and d["net"] == "tap" and d["init"] == "lean"
    for g in lab.guests:
        assert g.host == g.spec.address and g.port == 22
        assert Path(f"/sys/class/net/{g.info['tap']}/master").resolve().name.startswith("slb-")
    # The kernel is in its own VM: not the host's kernel, and PID 1 is the lean init.
    g = lab.guests[0]
    assert run_ok(lab, g.name, "uname -r").strip() == d["kernel"]
    assert run_ok(lab, g.name, "cat /proc/1/cmdline | tr '\\0' ' '").startswith(
        "/bin/sh /usr/lib/scalelab/init")
    assert "default" not in run_ok(lab, g.name, "ip -4 route")


def test_root_is_overlay_of_a_read_only_disk(lab: Lab) -> None:
    for g in lab.guests:
        mounts = [ln.split() for ln in run_ok(lab, g.name, "cat /proc/mounts").splitlines()]
        by_point = {m[1]: m for m in mounts}
        assert by_point["/"][2] == "overlay"
        assert by_point["/ro"][0] == "/dev/vda" and by_point["/ro"][3].split(",")[0] == "ro"
        assert by_point["/rw"][0] == "/dev/vdb" and by_point["/rw"][3].split(",")[0] == "rw"
        assert run_ok(lab, g.name, "cat /sys/block/vda/ro").strip() == "1"
        assert run_ok(lab, g.name, "cat /sys/block/vdb/ro").strip() == "0"
        # The device itself refuses writes, whatever the guest's root would try.
        res = lab.require_fleet().run("dd if=/dev/zero of=/dev/vda bs=512 count=1",
                                      names=[g.name])[g.name]
        assert res.exit_status != 0
        fstab = run_ok(lab, g.name, "cat /etc/fstab")
        assert "scalelab-overlayroot" in fstab
        assert not [ln for ln in fstab.splitlines()
                    if not ln.startswith("#") and len(ln.split()) > 2
                    and (ln.split()[1] == "/" or ln.split()[2] == "swap")]


def test_writes_stay_in_one_vm(lab: Lab, vm_image: Image) -> None:
    a, b = lab.guests[0].name, lab.guests[1].name
    run_ok(lab, a, "echo only-in-a > /root/cow-probe && sync")
    assert run_ok(lab, a, "cat /root/cow-probe").strip() == "only-in-a"
    assert run_ok(lab, a, "cat /rw/upper/root/cow-probe").strip() == "only-in-a"
    assert run_ok(lab, b, "test -e /root/cow-probe && echo yes || echo no").strip() == "no"
    assert run_ok(lab, a, "test -e /ro/root/cow-probe && echo yes || echo no").strip() == "no"
    # Nor in the image file (read with debugfs, which never writes without -w).
    out = subprocess.run(["debugfs", "-R", "ls -l /root", str(vm_image.path)],
                         capture_output=True, text=True, check=True)
    assert "cow-probe" not in out.stdout


def test_writable_disk_is_small_after_boot(lab: Lab) -> None:
    fp = lab.backend.footprint(lab.guests)  # type: ignore[attr-defined]
    for g in lab.guests:
        blocks, free, bsize = map(int, run_ok(lab, g.name, "stat -f -c '%b %f %S' /rw").split())
        assert (blocks - free) * bsize <= 1 << 20
        # Host side: every allocated block of the ext4 image, metadata included.
        upper, unit = fp[g.name]["upper_bytes"]
        assert unit == "B" and 0 < upper <= 1 << 20
        mem, _ = fp[g.name]["memory_bytes"]
        assert mem > 32 << 20


def test_bringup_phases_recorded(lab: Lab) -> None:
    rows = [json.loads(ln) for ln in (lab.run_dir / "timings.jsonl").read_text().splitlines()]
    t = pd.DataFrame(rows)
    t = t[t["phase"] == "bringup"]
    for g in lab.guests:
        ops = set(t[t["guest"] == g.name]["op"])
        assert {"created", "started", "booted", "tcp", "auth"} <= ops, ops
        console = (lab.run_dir / "guests" / f"{g.name}.console.log").read_text(errors="replace")
        assert "scalelab-init: userspace" in console


def test_telemetry_sees_a_vm_burn_cpu_and_send(session: Session, lab: Lab) -> None:
    """The QEMU process's CPU, the tap's counters and the drives' (QMP), as the sampler
    reads them (TCG)."""
    burner, other = lab.guests[0], lab.guests[1]
    names = [g.name for g in lab.guests]
    sampled_after(session.run_dir, names, time.time_ns())  # a sample of each before t0
    t0 = time.time_ns()
    run_ok(lab, burner.name, "timeout 4 sh -c 'while :; do :; done' || true")
    # 8 MiB down to the writable disk (the overlay's upper layer), none to the image.
    run_ok(lab, burner.name, "dd if=/dev/zero of=/root/blocks bs=1M count=8 conv=fsync")
    # 8 MiB from one VM to the other across the lab bridge (its tap, then the other's).
    agents = Agents(lab.require_fleet(), session.recorder("qemu-transfer", N))
    agents.deploy_builtin("transfer")
    agent = f"{REMOTE_DIR}/transfer.py"
    with agents:
        assert agents.serve("tsrv", ["python3", agent, "serve", "5998"], names=[other.name]).ok
        run_ok(lab, burner.name, f"python3 {agent} send {other.spec.address} 5998 {8 << 20}")
    t1 = time.time_ns()
    df = sampled_after(session.run_dir, names, t1)  # every round up to t1 written
    t = df["t"].astype("int64")
    assert growth(df, burner.name, "cpu_seconds", t0, t1) > 2.0  # 4 s busy: about a core
    assert growth(df, burner.name, "net_tx_bytes", t0, t1) >= 8 << 20
    assert growth(df, other.name, "net_rx_bytes", t0, t1) >= 8 << 20
    assert growth(df, burner.name, "disk_written_bytes", t0, t1, item="upper") >= 8 << 20
    assert growth(df, burner.name, "disk_written_bytes", t0, t1, item="image") == 0
    assert growth(df, other.name, "disk_written_bytes", t0, t1, item="upper") < 8 << 20
    assert (df[(t >= t0) & (t <= t1)]["guest"] == other.name).any()


def test_pause_and_resume(lab: Lab) -> None:
    g = lab.guests[1]
    qmp_path = Path(g.info["qmp"])
    qemu_of(lab).pause(g)
    try:
        assert qmp(qmp_path, "query-status")["status"] == "paused"
        group = lab.require_fleet().run("true", names=[g.name], timeout=2)
        assert group.failed == {g.name: "timeout"}  # a frozen guest answers nothing
    finally:
        qemu_of(lab).resume(g)
    assert qmp(qmp_path, "query-status")["status"] == "running"
    assert run_ok(lab, g.name, "echo back").strip() == "back"


def test_isolate_and_heal(lab: Lab) -> None:
    g = lab.guests[1]
    qemu_of(lab).isolate([g])
    try:
        # A fresh connection gets no answer (its SYN reaches a NIC whose link is down).
        with pytest.raises(OSError):
            socket.create_connection((g.spec.address, 22), timeout=1).close()
    finally:
        qemu_of(lab).heal()
    assert run_ok(lab, g.name, "echo healed").strip() == "healed"


def test_partition_and_heal(lab: Lab) -> None:
    """Between two VMs on the lab bridge: dropped both ways while partitioned; the host
    still reaches both; healed, the table is gone and they talk again."""
    g0, g1 = lab.guests[0], lab.guests[1]

    def reaches(src: Guest, dst: Guest) -> bool:
        probe = f"timeout 3 bash -c 'echo > /dev/tcp/{dst.spec.address}/22'"
        return bool(lab.require_fleet().run(probe, names=[src.name], timeout=30)[src.name].ok)

    assert reaches(g0, g1) and reaches(g1, g0)
    table = f"slp-{lab.backend.tag}"  # type: ignore[attr-defined]
    qemu_of(lab).isolate([g0], [g1])  # isolate from a group = partition
    try:
        assert not reaches(g0, g1) and not reaches(g1, g0)
        assert run_ok(lab, g0.name, "echo host").strip() == "host"
        assert run_ok(lab, g1.name, "echo host").strip() == "host"
    finally:
        qemu_of(lab).heal()
    assert reaches(g0, g1) and reaches(g1, g0)
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    assert table not in listed.stdout


def test_kill_and_teardown_leave_nothing(session: Session, vm_image: Image) -> None:
    """A second lab in the run: kill one VM, then take the lab down; nothing remains."""
    before = snapshot()
    lab = session.lab_up(1, name="kill")
    g = lab.guests[0]
    pid, tap = int(g.info["pid"]), g.info["tap"]
    disk, sock = Path(g.info["disk"]), Path(g.info["qmp"])
    assert disk.is_file() and sock.exists() and Path(f"/sys/class/net/{tap}").exists()
    qemu_of(lab).kill(g)
    assert not process_alive(pid, None)
    problems = lab.stop()
    assert problems == []
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(f"/sys/class/net/{tap}").exists()
    assert not disk.exists() and not sock.exists()
    assert not (STATE_ROOT / lab.run_id).exists()
    assert ours(before, lab.run_id) == {}
    assert sha256_file(vm_image.path) == vm_image.digest


def test_user_networking_and_tmpfs_upper(vm_image: Image, tmp_path: Path) -> None:
    """The fallback network (one forwarded loopback port, nothing else reachable) and the
    seed's tmpfs upper layer, seeded from the guest's disk, in one VM."""
    before = snapshot()
    cfg = build_config({"guests": "1", "backend": "qemu://?accel=tcg&net=user&upper=tmpfs",
                        "reports_dir": str(tmp_path)}, PROJECT)
    s = Session(cfg)
    try:
        lab = s.lab_up(1)
        g = lab.guests[0]
        assert g.host == "127.0.0.1" and g.port != 22 and g.info["tap"] == ""
        assert lab.backend.describe()["net"] == "user"
        out = run_ok(lab, g.name, "hostname; ip -4 -o addr show eth0; ip -4 route")
        assert out.splitlines()[0] == g.name and f"inet {g.spec.ip} " in out
        assert "default" not in out
        mounts = {ln.split()[1]: ln.split() for ln in run_ok(lab, g.name, "cat /proc/mounts")
                  .splitlines()}
        assert mounts["/"][2] == "overlay" and mounts["/rw"][2] == "tmpfs"
        assert "/dev/vdb" not in {m[0] for m in mounts.values()}  # the seed disk is let go
        assert run_ok(lab, g.name, "cat /rw/upper/etc/hostname").strip() == g.name
        pid = int(g.info["pid"])
    finally:
        assert s.finish(render=False) == []
    assert not Path(f"/proc/{pid}").exists()
    assert ours(before, s.run_id) == {}


def test_qemu_dying_at_start_fails_at_once(vm_image: Image, tmp_path: Path) -> None:
    """A VM whose qemu exits fails the bring-up with qemu's words, long before the timeout."""
    before = snapshot()
    cfg = build_config({"guests": "1", "backend": "qemu://?accel=tcg&cpu=no-such-cpu",
                        "ready_timeout": "600", "reports_dir": str(tmp_path)}, PROJECT)
    s = Session(cfg)
    t0 = time.monotonic()
    try:
        with pytest.raises(LabError) as err:
            s.lab_up(1)
    finally:
        assert s.finish(render=False) == []
    assert time.monotonic() - t0 < 60
    assert "died before answering: qemu exited with status 1" in str(err.value)
    assert "no-such-cpu" in str(err.value)  # qemu's own complaint, quoted
    assert ours(before, s.run_id) == {}


def test_systemd_boot(vm_image: Image, tmp_path: Path) -> None:
    """init=systemd: the same identity, address and sshd, started by a unit (slow: TCG)."""
    before = snapshot()
    cfg = build_config({"guests": "1", "backend": "qemu://?accel=tcg&init=systemd",
                        "reports_dir": str(tmp_path)}, PROJECT)
    s = Session(cfg)
    try:
        lab = s.lab_up(1)
        g = lab.guests[0]
        assert run_ok(lab, g.name, "cat /proc/1/comm").strip() == "systemd"
        out = run_ok(lab, g.name, "hostname; ip -4 -o addr show eth0; "
                   "systemctl is-active scalelab-guest.service; pgrep -c sshd")
        name, addr, active, n_sshd = out.strip().splitlines()
        assert name == g.name and f"inet {g.spec.ip} " in addr and active == "active"
        assert int(n_sshd) >= 1
        assert run_ok(lab, g.name, "grep ' / ' /proc/mounts").split()[2] == "overlay"
    finally:
        assert s.finish(render=False) == []
    assert ours(before, s.run_id) == {}


UP_AND_WAIT = """
import sys
from pathlib import Path
from harness.config import build_config
from harness.identity import run_tag
from harness.session import Session
cfg = build_config({"guests": "2", "backend": "qemu://?accel=tcg",
                    "reports_dir": sys.argv[1]}, Path(sys.argv[2]))
Session(cfg).lab_up(2)
sys.stdin.read()
"""


def test_sigkill_owner_during_boot_then_clean(vm_image: Image, tmp_path: Path) -> None:
    """The owner dies while its VMs boot; `scalelab clean` kills the VMs (by pid and start
    time from the journal) and removes their taps, bridge, disks and sockets."""
    before = snapshot()
    known = {st.run_id for st in list_states()}
    proc = subprocess.Popen([sys.executable, "-c", UP_AND_WAIT, str(tmp_path), str(PROJECT)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline:
            mine = [st for st in list_states() if st.run_id not in known
                    and st.header.get("pid") == proc.pid]
            if mine and sum(r.kind == "process" for r in mine[0].resources) == 2:
                state = mine[0]
                break
            time.sleep(0.1)
        assert state is not None, "the VMs were never journalled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    pids = [(int(r.get("pid")), r.get("start")) for r in state.resources if r.kind == "process"]
    links = [str(r.get("name")) for r in state.resources if r.kind == "link"]
    assert all(process_alive(p, st) for p, st in pids)  # VMs outlive their owner...
    out = subprocess.run([sys.executable, "-m", "harness.cli", "clean"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert state.run_id in out.stdout
    assert not any(process_alive(p, st) for p, st in pids)  # ...and clean ends them
    assert not [n for n in links if Path(f"/sys/class/net/{n}").exists()]
    assert not state.dir.exists()
    assert ours(before, state.run_id) == {}
    assert sha256_file(vm_image.path) == vm_image.digest


def test_check_refuses_clearly(vm_image: Image, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refusal(url: str, image: Image = vm_image, n: int = 2) -> str:
        with pytest.raises(UserError) as err:
            load_backend(parse_backend(url)).check(image, n)
        msg = str(err.value)
        assert "\n" not in msg
        return msg

    assert "memory" in refusal("qemu://?memory=4T")
    assert "unknown" in refusal("qemu://?memroy=256M")
    assert "net=user" in refusal("qemu://?net=bridge")
    assert "256M" in refusal("qemu://?memory=lots")
    # An image without the VM parts (the netns image) is refused, naming the fix.
    plain = ensure_image(build_config({}, PROJECT))
    assert "--vm" in refusal("qemu://", plain)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "apt-get install qemu-system-x86" in refusal("qemu://")


def _kvm_this_host_can_run() -> tuple[bool, str]:
    """What this host's KVM is, from its own facts (not from the harness's probe).

    ``/dev/kvm`` here is PVM (module kvm_pvm, no vmx/svm flag in /proc/cpuinfo): it only runs
    guests whose kernel is built for PVM, and the image's Debian kernel is not.  With hardware
    virtualisation (vmx/svm) and no PVM, a KVM guest is expected to boot.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no /dev/kvm"
    flags = set(Path("/proc/cpuinfo").read_text().split())
    if Path("/sys/module/kvm_pvm").exists() and not flags & {"vmx", "svm"}:
        return False, "PVM"
    return bool(flags & {"vmx", "svm"}), "hardware virtualisation"


# The probe VM reaches no panic message: it resets at once (PVM: exit status 0 under
# -no-reboot, nothing on the console), fails, or hangs until the probe's timeout; each says
# that a KVM test VM did not run, and why.
PROBE_FAILED = re.compile(r"the KVM test VM reset before its kernel printed a line .+"
                          r"|KVM test VM failed: .+|a KVM test VM did not boot within \d+s"
                          r"|KVM test VM stopped with exit status .+")


def test_accel_auto_says_what_it_chose(vm_image: Image, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A cache of its own: the probe really runs (a remembered answer could be stale).
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    kvm, why = _kvm_this_host_can_run()
    backend = QemuBackend({"accel": "auto"})
    backend._choose_accel(vm_image)
    if kvm:
        assert (backend.accel, backend.accel_reason) == ("kvm", "a KVM test VM booted")
    elif why == "no /dev/kvm":
        assert (backend.accel, backend.accel_reason) == ("tcg",
                                                         "KVM not usable: no usable /dev/kvm")
    else:  # PVM: this machine
        assert backend.accel == "tcg"
        assert backend.accel_reason.startswith("KVM not usable: "), backend.accel_reason
        probe = backend.accel_reason.removeprefix("KVM not usable: ")
        assert PROBE_FAILED.fullmatch(probe), probe
        # Asked for KVM by name, the same finding is a clear refusal...
        with pytest.raises(UserError, match=r"accel=kvm: .*KVM test VM.*use accel=tcg"):
            QemuBackend({"accel": "kvm"})._choose_accel(vm_image)
    # ...and the answer is remembered for this boot, saying so.
    again = QemuBackend({"accel": "auto"})
    again._choose_accel(vm_image)
    assert again.accel == backend.accel
    assert again.accel_reason == backend.accel_reason + " (cached)"


class _Tables(HTMLParser):
    """section id → the rows (cell texts) of the tables in it."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self._section: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section.append(dict(attrs).get("id") or "")
        elif tag == "thead":
            self._head = True
        elif tag == "tr":
            self._row = []
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section.pop()
        elif tag == "thead":
            self._head = False
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and not self._head and self._section:
            self.rows.setdefault(self._section[0], []).append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_faults_through_the_nemesis_are_rows_and_bands(session: Session, vm_image: Image,
                                                        tmp_path: Path) -> None:
    """Pause, isolate, partition and kill of VMs through the Nemesis: each fault really
    happens, becomes a fault row (a band of the run's plots over time) and a line of the
    report's fault table; the killed VM is lost in the report."""
    lab = session.lab_up(2, name="nemesis")
    scenario = "test_qemu_nemesis"
    try:
        fleet = lab.require_fleet()
        a, b = fleet.names
        guest = fleet.guests[b]
        rec = session.recorder(scenario, 2, lab=lab.name)
        nem = Nemesis(lab.backend, rec, fleet)
        roundtrip(fleet, rec, rounds=2)  # workload rows: the timeline the bands lie on
        with nem.paused([b]):
            assert qmp(Path(guest.info["qmp"]), "query-status")["status"] == "paused"
            assert fleet.run("true", names=[b], timeout=2).failed == {b: "timeout"}
        assert fleet.run("true", names=[b], timeout=60).ok
        with nem.isolated([b]), pytest.raises(OSError):
            socket.create_connection((guest.spec.address, 22), timeout=1).close()
        probe = f"timeout 3 bash -c 'echo > /dev/tcp/{guest.spec.address}/22'"
        assert fleet.run(probe, names=[a], timeout=30)[a].ok
        with nem.partitioned([a], [b]):
            assert not fleet.run(probe, names=[a], timeout=30)[a].ok
        assert fleet.run(probe, names=[a], timeout=30)[a].ok
        pid = int(guest.info["pid"])
        assert process_alive(pid, None)  # running until the kill
        nem.kill([b])
        assert not process_alive(pid, None)
        roundtrip(fleet, rec, rounds=2)
    finally:
        assert lab.stop() == []

    t = rec.timings()
    faults = t[t["phase"] == "fault"]
    assert sorted(zip(faults["op"], faults["guest"], strict=True)) == sorted(
        [("pause", b), ("isolate", b), ("partition", a), ("partition", b), ("kill", b)])
    # The bands: every fault window inside the span of the scenario's workload rows.
    wl = t[t["phase"] == "workload"]
    assert (faults["start"] >= wl["start"].min()).all()
    assert (faults["end"] <= wl["end"].max()).all()
    # Lost from the kill on: left out of the rounds after it, which the other VM still ran.
    killed_at = faults[faults["op"] == "kill"]["end"].max()
    after_kill = wl[wl["start"] > killed_at]
    assert list(after_kill["guest"]) == [a, a] and after_kill["ok"].all()
    (lost,) = t[t["phase"] == "lost"].to_dict(orient="records")
    assert lost["guest"] == b and lost["error_class"] == "lost"

    index = render_report(session.run_dir, out_dir=tmp_path / "report")
    html = index.read_text()
    tables = _Tables()
    tables.feed(html)
    shown = sorted((r[0], r[1]) for r in tables.rows.get("faults", []) if r[2] == scenario)
    assert shown == sorted([("pause", b), ("isolate", b), ("partition", a), ("partition", b),
                            ("kill", b)])
    assert [r[0] for r in tables.rows.get("lost", []) if r[1] == scenario] == [b]
    assert f'id="plot-{scenario}-timeline"' in html


def test_pytest_plugin_ssh_fanout_on_qemu(vm_image: Image, tmp_path: Path) -> None:
    """The scenario users run, through the plugin, on two VMs."""
    before = snapshot()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/test_ssh_fanout.py", "--guests=2",
         "--backend=qemu://?accel=tcg", f"--reports-dir={tmp_path}", "-p", "no:cacheprovider",
         "-q"],
        cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = (tmp_path / "latest").resolve()
    info = json.loads((run / "run.json").read_text())
    assert info["backend"]["name"] == "qemu" and info["backend"]["accel"] == "tcg"
    t = pd.read_parquet(run / "timings.parquet")
    assert set(t[t["op"] == "booted"]["guest"]) == {"g000", "g001"}
    assert ours(before, run.name) == {}
