"""The netns backend for real: namespaces, overlayfs, sshd, pinned keys, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from helpers.labs import lab_session, run_ok
from leaks import PROJECT, snapshot

from harness.backends.base import Guest
from harness.config import build_config
from harness.identity import KeyPair
from harness.image.build import sha256_file
from harness.image.cache import Image
from harness.lab import Lab
from harness.session import Session
from harness.ssh import (
    Fleet,
    GuestError,
    HandshakeGate,
    ReadyOptions,
    connect_ready,
    load_private_key,
    run_on,
)
from harness.state import RunState, list_states

pytestmark = pytest.mark.integration
N = 4


@pytest.fixture(scope="module")
def session(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with lab_session(tmp_path_factory.mktemp("reports"), guests=str(N)) as s:
        yield s


@pytest.fixture(scope="module")
def lab(session: Session, image: Image) -> Iterator[Lab]:
    digest_before = sha256_file(image.path)
    lab = session.lab_up(N)
    yield lab
    lab.stop()
    assert sha256_file(image.path) == digest_before, "a run wrote into the shared image"


def test_identity_inside_each_guest(lab: Lab) -> None:
    for g in lab.guests:
        out = run_ok(lab, g.name, "hostname; cat /sys/class/net/eth0/address; "
                   "ip -4 -o addr show eth0; cat /etc/machine-id; "
                   "cat /etc/ssh/ssh_host_ed25519_key.pub")
        hostname, mac, addr, machine_id, pub = out.strip().splitlines()
        assert hostname == g.name
        assert mac == g.spec.mac
        assert str(g.spec.ip) in addr
        assert machine_id == g.spec.machine_id
        assert pub.split()[:2] == g.spec.host_key.public_openssh.split()[:2]


def test_root_is_overlay_and_no_outside_route(lab: Lab) -> None:
    g = lab.guests[0]
    mounts = run_ok(lab, g.name, "cat /proc/mounts")
    root = [ln for ln in mounts.splitlines() if ln.split()[1] == "/"]
    assert root and root[0].split()[2] == "overlay"
    # The guest sees none of the host's mounts and has no route off the lab subnet.
    assert "/run/scalelab" not in mounts.replace(root[0], "")
    routes = run_ok(lab, g.name, "ip -4 route")
    assert "default" not in routes
    assert run_ok(lab, g.name, "cat /proc/1/comm").strip() == "sshd"


def test_writes_stay_in_one_guest(lab: Lab, image: Image) -> None:
    a, b = lab.guests[0], lab.guests[1]
    run_ok(lab, a.name, "echo secret > /etc/only-in-a && sync")
    assert run_ok(lab, a.name, "cat /etc/only-in-a").strip() == "secret"
    res = lab.require_fleet().run("test -e /etc/only-in-a", names=[b.name])[b.name]
    assert res.exit_status == 1
    # The write landed in a's upper layer, not in the image.
    assert (Path(a.info["upper"]) / "etc/only-in-a").read_text() == "secret\n"
    check = subprocess.run(["debugfs", "-R", "stat /etc/only-in-a", str(image.path)],
                           capture_output=True, text=True)
    assert "File not found" in check.stderr


def test_openssh_client_with_exported_files(lab: Lab) -> None:
    cfg = lab.run_dir / "ssh_config"
    for g in lab.guests[:2]:
        out = subprocess.run(
            ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", g.name, "hostname"],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == g.name
    text = cfg.read_text()
    assert "StrictHostKeyChecking yes" in text


def test_swapped_host_key_is_refused(lab: Lab) -> None:
    a, b = lab.guests[0], lab.guests[1]
    # Pretend b's key is a's: a connection to a must then be refused by both clients.
    hk = paramiko.HostKeys()
    key = paramiko.Ed25519Key(data=paramiko.Ed25519Key.from_private_key(
        __import__("io").StringIO(b.spec.host_key.private_openssh)).asbytes())
    hk.add(a.host, "ssh-ed25519", key)
    client_key = load_private_key(
        (RunState.load(lab.state.path).dir / "id_ed25519").read_text()  # type: ignore[union-attr]
    )
    with pytest.raises(GuestError) as err:
        connect_ready(a, client_key, hk, HandshakeGate(1), lambda *x: None,
                      ReadyOptions(timeout=10))
    assert err.value.error_class == "hostkey"
    known = lab.run_dir / "known_hosts.swapped"
    kt, blob = b.spec.host_key.public_openssh.split()[:2]
    known.write_text(f"{a.name},{a.host} {kt} {blob}\n")
    out = subprocess.run(
        ["ssh", "-F", str(lab.run_dir / "ssh_config"), "-o", f"UserKnownHostsFile={known}",
         "-o", "BatchMode=yes", a.name, "true"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in out.stderr or "verification failed" in out.stderr


def test_unknown_host_is_refused(lab: Lab) -> None:
    """No trust on first use: a guest whose key is not pinned is not connected to."""
    a = lab.guests[0]
    client_key = load_private_key(
        (lab.state.dir / "id_ed25519").read_text()  # type: ignore[union-attr]
    )
    with pytest.raises(GuestError) as err:
        connect_ready(a, client_key, paramiko.HostKeys(), HandshakeGate(1), lambda *x: None,
                      ReadyOptions(timeout=10))
    assert err.value.error_class == "hostkey"


def test_phases_and_footprint_recorded(lab: Lab, session: Session) -> None:
    df = session.store.scoped().timings()
    bring = df[df["phase"] == "bringup"]
    for g in lab.guests:
        ops = set(bring[bring["guest"] == g.name]["op"])
        assert {"created", "started", "tcp", "banner", "auth", "first_command"} <= ops
    metrics = session.store.scoped().metrics()
    upper = metrics[metrics["metric"] == "upper_bytes"]
    assert len(upper) == N
    assert (upper["value"] <= 64 * 1024).all(), upper["value"].tolist()
    assert (metrics[metrics["metric"] == "memory_bytes"]["value"] > 0).all()


def test_down_leaves_nothing(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    cfg = build_config({"guests": "3", "reports_dir": str(tmp_path)}, PROJECT)
    s = Session(cfg)
    try:
        lab = s.lab_up(3)
        during = before.diff(snapshot())
        assert len(during["netns"]) == 3 and len(during["procs"]) >= 3
        assert lab.stop() == []
        assert lab.stop() == []  # idempotent
    finally:
        s.finish(render=False)
    assert before.diff(snapshot()) == {}


def test_guest_dying_during_boot_fails_at_once(
        image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest whose init is killed before it answers is reported dead, not waited for."""
    from harness.backends.netns import NetnsBackend

    before = snapshot()
    real_up = NetnsBackend.up

    def up_then_kill_one(self: NetnsBackend, specs: Any) -> list[Guest]:
        guests = real_up(self, specs)
        self._procs[guests[1].name].kill()  # the real init process of the second guest
        return guests

    monkeypatch.setattr(NetnsBackend, "up", up_then_kill_one)
    cfg = build_config({"guests": "3", "ready_timeout": "600",
                        "reports_dir": str(tmp_path)}, PROJECT)
    s = Session(cfg)
    t0 = time.monotonic()
    try:
        lab = s.lab_up(3, min_ready=0.5)
        assert time.monotonic() - t0 < 60
        assert sorted(lab.require_fleet().names) == [lab.guests[0].name, lab.guests[2].name]
        err = lab.failures[lab.guests[1].name]
        assert err.error_class == "lost"
        assert "died before answering: the guest's init exited with status -9" in err.message
    finally:
        assert s.finish(render=False) == []
    assert before.diff(snapshot()) == {}


UP_AND_DIE = """
import os, sys
from pathlib import Path
from harness.config import build_config
from harness.session import Session
cfg = build_config({"guests": sys.argv[1], "reports_dir": sys.argv[2]}, Path(sys.argv[3]))
s = Session(cfg)
s.lab_up(int(sys.argv[1]))
print("UP", s.run_id, flush=True)
sys.stdin.read()
"""


def test_sigkill_then_clean(image: Image, tmp_path: Path) -> None:
    """After the owner is SIGKILLed, `scalelab clean` removes exactly the run's resources."""
    before = snapshot()
    proc = subprocess.Popen(
        [sys.executable, "-c", UP_AND_DIE, "3", str(tmp_path), str(PROJECT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("UP"), line
    run_id = line.split()[1]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leaked = before.diff(snapshot())
    assert leaked.get("procs") and leaked.get("netns")  # guests outlive their owner...
    assert run_id in [s.run_id for s in list_states() if not s.owner_alive]
    out = subprocess.run([sys.executable, "-m", "harness.cli", "clean"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert run_id in out.stdout
    time.sleep(0.2)
    assert before.diff(snapshot()) == {}  # ...and clean removes them all


def test_guest_objects_describe_the_running_guests(lab: Lab) -> None:
    """What a Guest says (name, address, port, upper layer) is what is running."""
    fleet = lab.require_fleet()
    assert [type(g) for g in lab.guests] == [Guest] * N
    assert sorted(g.name for g in lab.guests) == sorted(fleet.names)
    assert len({g.name for g in lab.guests}) == N  # and a set of them is keyed by name
    for g in lab.guests:
        assert g.name == g.spec.name and repr(g) == f"Guest({g.name} {g.host}:{g.port})"
        assert (g.host, g.port, g.jump) == (g.spec.address, 22, None)
        # Its address answers with OpenSSH's banner...
        with socket.create_connection((g.host, g.port), timeout=10) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-OpenSSH")
        # ...and the upper layer it names is the one under the guest's own root.
        root = run_ok(lab, g.name, "grep ' / / ' /proc/self/mountinfo")
        assert f"upperdir={g.info['upper']}," in root, root
        assert Path(g.info["upper"]).is_dir()


def test_a_client_key_the_guest_does_not_know_is_auth(lab: Lab) -> None:
    """A real sshd refusing our key: class auth, final at once (not waited out)."""
    g = lab.guests[0]
    host_keys = paramiko.HostKeys()
    host_keys.add(g.host, "ssh-ed25519", load_private_key(g.spec.host_key.private_openssh))
    stranger = load_private_key(KeyPair.generate().private_openssh)
    t0 = time.monotonic()
    with pytest.raises(GuestError) as err:
        connect_ready(g, stranger, host_keys, HandshakeGate(1), lambda *x: None,
                      ReadyOptions(timeout=120))
    assert err.value.error_class == "auth"
    assert time.monotonic() - t0 < 60  # refused once, not retried until the deadline


def test_the_run_client_key_is_private(lab: Lab) -> None:
    assert lab.state is not None
    key = lab.state.dir / "id_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == 0
    assert "PRIVATE KEY" in key.read_text()
    # The run directory (the report people read and copy) has no copy of it.
    assert not [p for p in lab.run_dir.rglob("id_ed25519*")]


def test_command_streams_are_kept_apart_and_bounded(lab: Lab) -> None:
    """stdout and stderr are read by one thread: neither may stall the other."""
    name = lab.guests[0].name
    fleet = lab.require_fleet()
    assert isinstance(fleet, Fleet)  # one lab's fleet: its clients are here
    # 8 MiB on stderr while stdout stays silent, then a line on stdout: a reader that
    # only waited on stdout would stall once stderr filled the channel window (2 MiB).
    res = fleet.run("head -c 8388608 /dev/zero | tr '\\0' e >&2; echo done; exit 3",
                    names=[name])[name]
    assert (res.exit_status, res.stdout, len(res.stderr)) == (3, "done\n", 8 << 20)
    assert set(res.stderr) == {"e"}
    # Interleaved output on both streams arrives whole and in order within each stream.
    res = fleet.run("for i in $(seq 2000); do echo o$i; echo e$i >&2; done",
                    names=[name])[name]
    assert res.stdout.split() == [f"o{i}" for i in range(1, 2001)]
    assert res.stderr.split() == [f"e{i}" for i in range(1, 2001)]
    # Beyond the cap, output is dropped and the drop is said.
    res = run_on(fleet.clients[name], "head -c 20000000 /dev/zero", guest=name)
    assert len(res.stdout.encode()) < (16 << 20) + 200
    dropped = 20000000 - (16 << 20)
    assert res.stdout.endswith(f"[scalelab: {dropped} more bytes of output dropped]\n")
    # A command that outlives its timeout is a timeout, quiet or not.
    for cmd in ("sleep 5", "while :; do echo x >&2; sleep 0.01; done", "yes"):
        t0 = time.monotonic()
        with pytest.raises(GuestError) as err:
            run_on(fleet.clients[name], cmd, timeout=0.5, guest=name)
        assert err.value.error_class == "timeout"
        assert time.monotonic() - t0 < 4


def test_upper_layer_on_disk(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    cfg = build_config({"guests": "2", "reports_dir": str(tmp_path / "r"),
                        "backend": f"netns://?upper=disk&upper_dir={tmp_path / 'rw'}"}, PROJECT)
    s = Session(cfg, image=image)
    try:
        lab = s.lab_up(2)
        g = lab.guests[0]
        assert str(tmp_path / "rw") in g.info["upper"]
        lab.require_fleet().run("echo on-disk > /root/marker", names=[g.name])
        assert (Path(g.info["upper"]) / "root/marker").read_text() == "on-disk\n"
    finally:
        s.finish(render=False)
    assert before.diff(snapshot()) == {}
    assert not any((tmp_path / "rw").iterdir())
