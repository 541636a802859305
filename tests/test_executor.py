"""Persistent guest sessions on real netns guests: the executor started by the readiness
wait runs commands as plain child processes (exit codes, output, env, cwd, stdin, timeouts,
caps, many at once), its death is a classified failure that does not hang, and a guest
without python3 falls back to exec channels and SFTP."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from helpers.labs import lab_session, run_ok

from harness.backends.base import Guest
from harness.image.cache import Image
from harness.lab import Lab
from harness.session import Session
from harness.ssh import (
    Fleet,
    GuestError,
    HandshakeGate,
    ReadyOptions,
    connect_ready,
    host_keys_for,
    load_private_key,
    no_executor,
    run_on,
    session_of,
)
from harness.ssh.executor import Session as GuestSession

pytestmark = pytest.mark.integration

N = 3


@pytest.fixture(scope="module")
def session(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with lab_session(tmp_path_factory.mktemp("reports"), guests=str(N)) as s:
        yield s


@pytest.fixture(scope="module")
def lab(session: Session, image: Image) -> Iterator[Lab]:
    lab = session.lab_up(N)
    yield lab
    lab.stop()


def _fleet(lab: Lab) -> Fleet:
    """The lab's own fleet (one lab host: its connections are here)."""
    fleet = lab.require_fleet()
    assert isinstance(fleet, Fleet)
    return fleet


def _session(lab: Lab, name: str) -> GuestSession:
    s = session_of(_fleet(lab).clients[name])
    assert s is not None, f"{name} has no executor session"
    return s


def _exec(lab: Lab, name: str, cmd: str) -> str:
    """``cmd`` over an exec channel of its own (not through the executor)."""
    res = run_on(_fleet(lab).clients[name], cmd, timeout=30, guest=name)
    assert res.exit_status == 0, res.stderr
    return res.stdout


def test_bring_up_leaves_every_guest_with_a_live_executor(lab: Lab) -> None:
    fleet = lab.require_fleet()
    for name in fleet.names:
        s = _session(lab, name)
        assert s.info["python"].startswith("3.")
        # The executor is a process in the guest (its PID namespace), child of sshd's.
        assert _exec(lab, name, f"cat /proc/{s.info['pid']}/comm").strip() == "python3"
    group = fleet.run("cat /etc/hostname")
    assert group.ok and {n: r.stdout.strip() for n, r in group.results.items()} == {
        n: n for n in fleet.names}


def test_commands_run_with_their_status_output_env_cwd_and_stdin(lab: Lab) -> None:
    name = lab.require_fleet().names[0]
    s = _session(lab, name)
    res = s.run("echo out; echo err >&2; exit 7")
    assert (res.exit_status, res.stdout, res.stderr, res.guest) == (7, "out\n", "err\n", name)
    assert res.start_ns <= res.end_ns
    assert s.run("true").exit_status == 0 and s.run("false").exit_status == 1
    assert s.run("pwd").stdout == "/root\n"  # the user's home, as sshd starts commands
    assert s.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert s.run('echo "$A-$B"', env={"A": "1", "B": "two"}).stdout == "1-two\n"
    assert s.run("cat", stdin=b"given on stdin\n").stdout == "given on stdin\n"
    assert s.run("wc -c", stdin=b"x" * 300_000).stdout.strip() == "300000"
    # A plain command runs without a shell, a shell's command through the user's shell.
    assert s.run("nosuchcommand-x").exit_status == 127
    assert s.run("kill -9 $$").exit_status == 137  # killed by a signal: 128 + its number
    with pytest.raises(GuestError) as err:
        s.run("pwd", cwd="/nonexistent")
    assert err.value.error_class == "error" and "nonexistent" in err.value.message


def test_timeouts_kill_the_command(lab: Lab) -> None:
    name = lab.require_fleet().names[0]
    s = _session(lab, name)
    for cmd in ("sleep 30", "while :; do echo x >&2; sleep 0.01; done", "yes"):
        with pytest.raises(GuestError) as err:
            s.run(f"echo $$ > /tmp/timed-out.pid; exec {cmd}" if cmd == "sleep 30" else cmd,
                  timeout=0.5)
        assert err.value.error_class == "timeout"
    # The guest killed what the client gave up on (and the session still works).
    pid = s.run("cat /tmp/timed-out.pid").stdout.strip()
    time.sleep(0.5)
    assert s.run(f"kill -0 {pid}").exit_status != 0
    group = lab.require_fleet().run("sleep 30", timeout=0.5, names=[name])
    assert group.failed == {name: "timeout"}


def test_concurrent_requests_on_one_guest_overlap(lab: Lab) -> None:
    s = _session(lab, lab.require_fleet().names[1])
    pending = [s.start(f"sleep 0.3; echo {i}", timeout=30) for i in range(8)]
    results = [p.result() for p in pending]
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
    # All eight started (in the guest) before the first one ended: they ran at once.
    assert max(r.start_ns for r in results) < min(r.end_ns for r in results)


def test_output_is_capped_as_over_exec_channels(lab: Lab) -> None:
    name = lab.require_fleet().names[1]
    s = _session(lab, name)
    res = s.run("head -c 20000000 /dev/zero")
    dropped = 20000000 - (16 << 20)
    assert len(res.stdout.encode()) < (16 << 20) + 200
    assert res.stdout.endswith(f"[scalelab: {dropped} more bytes of output dropped]\n")
    res = s.run("for i in $(seq 2000); do echo o$i; echo e$i >&2; done")
    assert res.stdout.split() == [f"o{i}" for i in range(1, 2001)]
    assert res.stderr.split() == [f"e{i}" for i in range(1, 2001)]


def test_uploads_go_through_the_session(lab: Lab, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "sub" / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (tree / "sub" / "data.bin").chmod(0o640)
    fleet = lab.require_fleet()
    assert fleet.put(tree, "/opt/tree").ok
    group = fleet.run("/opt/tree/run.sh && stat -c %a /opt/tree/run.sh /opt/tree/sub/data.bin"
                      " && md5sum < /opt/tree/sub/data.bin")
    digest = hashlib.md5((tree / "sub" / "data.bin").read_bytes()).hexdigest()
    for res in group.results.values():
        assert res.stdout.split() == ["ran", "755", "640", digest, "-"]


def test_a_killed_executor_fails_what_is_in_flight_and_is_started_again(lab: Lab) -> None:
    fleet = lab.require_fleet()
    name = fleet.names[2]
    s = _session(lab, name)
    pending = s.start("sleep 60", timeout=120)
    t0 = time.monotonic()
    _exec(lab, name, f"kill -9 {s.info['pid']}")
    with pytest.raises(GuestError) as err:
        pending.result()
    # Failed because the executor died, not after the command's 120 s timeout.
    assert err.value.error_class == "error" and "executor exited" in err.value.message
    assert time.monotonic() - t0 < 60
    assert s.dead is not None
    with pytest.raises(GuestError):
        s.run("true")
    # The guest is not lost: the next fan-out opens a new executor and runs on it.
    group = fleet.run("cat /etc/hostname", names=[name])
    assert group.ok and group[name].stdout.strip() == name and name not in fleet.lost
    assert _session(lab, name).info["pid"] != s.info["pid"]


def _connect(lab: Lab, guest: Guest) -> paramiko.SSHClient:
    assert lab.key_path is not None
    key = load_private_key(lab.key_path.read_text())
    return connect_ready(guest, key, host_keys_for([guest]), HandshakeGate(4),
                         lambda *a: None, ReadyOptions(timeout=60))


def test_a_guest_without_python3_falls_back_to_exec_channels(lab: Lab, tmp_path: Path) -> None:
    guest = lab.guests[2]
    name = guest.name
    # python3 gone from this guest's PATH (its own copy-on-write layer; the image is shared
    # read-only and keeps it).
    _exec(lab, name, "mv /usr/bin/python3 /usr/bin/python3.hidden")
    try:
        client = _connect(lab, guest)  # readiness: its first command over an exec channel
        try:
            assert session_of(client) is None
            why = no_executor(client)
            assert why is not None and "127" in why and "python3" in why
            fleet = Fleet({name: client}, {name: guest})
            res = fleet.run("echo $0; exit 4")[name]
            assert (res.exit_status, res.stdout) == (4, "bash\n")  # sshd's exec: a shell
            (tmp_path / "f.txt").write_text("over sftp\n")
            assert fleet.put(tmp_path / "f.txt", "/tmp/f.txt", mode=0o600).ok
            assert fleet.run("cat /tmp/f.txt; stat -c %a /tmp/f.txt")[name].stdout == (
                "over sftp\n600\n")
            fleet.close()
        finally:
            client.close()
    finally:
        _exec(lab, name, "mv /usr/bin/python3.hidden /usr/bin/python3")


def test_a_lab_with_sessions_off_runs_every_command_over_exec_channels(
        image: Image, tmp_path: Path) -> None:
    with lab_session(tmp_path, guests="2", sessions="off") as s:
        lab = s.lab_up(2)
        fleet = _fleet(lab)
        assert lab.describe()["sessions"] == {
            "mode": "off", "on": False,
            "why_off": "persistent sessions are off (--sessions=off)"}
        for name in fleet.names:
            client = fleet.clients[name]
            assert session_of(client) is None
            assert no_executor(client) == "persistent sessions are off (--sessions=off)"
        group = fleet.run("cat /etc/hostname")
        assert group.ok and {n: r.stdout.strip() for n, r in group.results.items()} == {
            n: n for n in fleet.names}
        src = tmp_path / "f.txt"
        src.write_text("over sftp\n")
        assert fleet.put(src, "/tmp/f.txt").ok
        # No executor was started in any guest: no python3 among its processes.
        for name in fleet.names:
            comms = _exec(lab, name, "cat /proc/[0-9]*/comm").split()
            assert "python3" not in comms and "sshd" in comms
            assert run_ok(lab, name, "cat /tmp/f.txt") == "over sftp\n"
