"""The exported inventory driven by the real tools: ansible-core (ping, a playbook applied
twice, a lab's group) and pytest-testinfra (its ssh and paramiko backends), against a run of
two netns labs, every connection through the run's ``ssh_config`` and pinned ``known_hosts``;
and, on the same guests, the waits scenarios used to write by hand (``Agents.wait_for_port``,
``Agents.wait_for_url``).

The commands are the README's ("Ansible" and "testinfra")."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.ansible import Ansible, one_line_results, recap
from helpers.cli import scalelab
from helpers.labs import lab_session
from leaks import PROJECT, snapshot

from harness.backends.base import Guest, Jump
from harness.identity import make_specs
from harness.image.cache import Image
from harness.inventory import InventoryLab, write_inventory
from harness.session import Session
from harness.ssh import write_exports
from harness.store import load_timings
from harness.workloads import Agents

pytestmark = pytest.mark.integration

ALL = ["g000", "g001", "extra-g000", "extra-g001"]

PLAYBOOK = """\
- name: a file on every guest
  hosts: all
  gather_facts: false
  tasks:
    - name: write it (unchanged when it is already there)
      ansible.builtin.copy:
        dest: /root/scalelab-ansible.txt
        content: "written by ansible on {{ inventory_hostname }}\\n"
        mode: "0644"
"""

INFRA_TESTS = """\
def test_hostname(host):
    assert host.check_output("hostname") == host.backend.get_hostname()


def test_debian_with_python3(host):
    assert host.file("/etc/os-release").contains("Debian")
    assert host.exists("python3")
"""


@pytest.fixture(scope="module")
def run(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One run, two labs of 2 guests (``g000``…, ``extra-g000``…) shared by this module's
    tests; like ``no_leaks``, but once for the module, it fails if anything is left."""
    before = snapshot()
    with lab_session(tmp_path_factory.mktemp("inv") / "r") as s:
        s.lab_up(2)
        s.lab_up(2, name="extra")
        yield s
    left = before.diff(snapshot())
    assert not left, f"left behind: {left}"


@pytest.fixture
def ansible(tmp_path: Path) -> Iterator[Ansible]:
    with Ansible(tmp_path / "ansible") as a:
        yield a


def tampered(run_dir: Path, work: Path, victim: str, donor: str) -> Path:
    """A copy of the run's exports in which ``victim``'s pinned key is ``donor``'s: a guest
    that would answer with a key other than its pin.  Returns the copy's inventory."""
    work.mkdir(parents=True, exist_ok=True)
    keys = {}
    lines = (run_dir / "known_hosts").read_text().splitlines()
    for ln in lines:
        names, kt, blob = ln.split()
        keys[names.split(",")[0]] = (kt, blob)
    known = work / "known_hosts"
    known.write_text("\n".join(
        f"{ln.split()[0]} {' '.join(keys[donor])}" if ln.split()[0].split(",")[0] == victim
        else ln for ln in lines) + "\n")
    cfg = work / "ssh_config"
    cfg.write_text((run_dir / "ssh_config").read_text().replace(
        str((run_dir / "known_hosts").resolve()), str(known.resolve())))
    inv = work / "inventory.yml"
    inv.write_text((run_dir / "inventory.yml").read_text().replace(
        str((run_dir / "ssh_config").resolve()), str(cfg.resolve())))
    return inv


def test_inventory_groups_and_hosts(run: Session, ansible: Ansible) -> None:
    inv = run.run_dir / "inventory.yml"
    listed = ansible("ansible-inventory", "-i", str(inv), "--list")
    assert listed.returncode == 0, listed.stderr
    assert "warning" not in listed.stderr.lower(), listed.stderr
    data: dict[str, Any] = json.loads(listed.stdout)
    assert data["lab_default"]["hosts"] == ["g000", "g001"]
    assert data["lab_extra"]["hosts"] == ["extra-g000", "extra-g001"]
    # A plain lab has no lab host: no labhost_ group (a cluster lab has one per host).
    assert not [k for k in data if k.startswith("labhost_")]
    cfg = (run.run_dir / "ssh_config").resolve()
    for lab in run.labs:
        assert lab.key_path is not None
        for g in lab.guests:
            hv = data["_meta"]["hostvars"][g.name]
            assert hv["ansible_host"] == g.name and hv["ansible_port"] == g.port
            assert hv["ansible_user"] == "root"
            assert hv["ansible_python_interpreter"] == "/usr/bin/python3"
            assert hv["ansible_ssh_private_key_file"] == str(lab.key_path.resolve())
            assert hv["ansible_ssh_common_args"] == f"-F {cfg}"
            assert hv["scalelab_address"] == g.spec.address
    # Each lab's own directory has its own inventory, through its own ssh_config.
    extra = run.run_dir / "labs" / "extra"
    own = ansible("ansible-inventory", "-i", str(extra / "inventory.yml"), "--list")
    own_data: dict[str, Any] = json.loads(own.stdout)
    assert sorted(own_data["_meta"]["hostvars"]) == ["extra-g000", "extra-g001"]
    assert own_data["_meta"]["hostvars"]["extra-g000"]["ansible_ssh_common_args"] == (
        f"-F {(extra / 'ssh_config').resolve()}")


def test_ansible_pings_every_guest_strictly_checked(run: Session, ansible: Ansible,
                                                    tmp_path: Path) -> None:
    inv = run.run_dir / "inventory.yml"
    out = ansible("ansible", "-i", str(inv), "all", "-m", "ping")
    assert out.returncode == 0, out.stdout + out.stderr
    assert one_line_results(out.stdout) == dict.fromkeys(ALL, "SUCCESS"), out.stdout
    assert out.stdout.count('"ping": "pong"') == 4, out.stdout
    assert "deprecat" not in out.stderr.lower(), out.stderr
    # Checking is really on: with g000 pinned to another guest's key, g000 is refused
    # (and only g000), by the same inventory through a copy of the exports.
    bad = Ansible(tmp_path / "tampered-ansible")
    try:
        out = bad("ansible", "-i", str(tampered(run.run_dir, tmp_path / "t", "g000", "g001")),
                  "all", "-m", "ping")
    finally:
        bad.close()
    assert out.returncode != 0
    assert one_line_results(out.stdout) == {"g000": "UNREACHABLE", "g001": "SUCCESS",
                                            "extra-g000": "SUCCESS",
                                            "extra-g001": "SUCCESS"}, out.stdout
    assert "Host key verification failed" in out.stdout + out.stderr, out.stdout


def test_lab_group_selects_only_its_guests(run: Session, ansible: Ansible) -> None:
    inv = str(run.run_dir / "inventory.yml")
    out = ansible("ansible", "-i", inv, "lab_extra", "-m", "ansible.builtin.command",
                  "-a", "hostname")
    assert out.returncode == 0, out.stdout + out.stderr
    got = dict(re.findall(r"^(\S+) \| CHANGED \| rc=0 >>\n(\S+)$", out.stdout, re.M))
    assert got == {"extra-g000": "extra-g000", "extra-g001": "extra-g001"}, out.stdout
    listed = ansible("ansible", "-i", inv, "lab_default", "--list-hosts")
    assert listed.stdout.split()[2:] == ["g000", "g001"], listed.stdout


def test_playbook_applied_twice_changes_nothing_the_second_time(run: Session,
                                                                ansible: Ansible) -> None:
    book = ansible.work / "site.yml"
    book.write_text(PLAYBOOK)
    inv = str(run.run_dir / "inventory.yml")
    first = ansible("ansible-playbook", "-i", inv, str(book))
    assert first.returncode == 0, first.stdout + first.stderr
    assert {h: c["changed"] for h, c in recap(first.stdout).items()} == dict.fromkeys(ALL, 1)
    second = ansible("ansible-playbook", "-i", inv, str(book))
    assert second.returncode == 0, second.stdout + second.stderr
    counts = recap(second.stdout)
    assert {h: (c["changed"], c["failed"], c["unreachable"]) for h, c in counts.items()} == (
        dict.fromkeys(ALL, (0, 0, 0))), second.stdout
    # The file is there, seen by scalelab's own fan-out rather than by Ansible.
    for lab in run.labs:
        group = lab.require_fleet().run("cat /root/scalelab-ansible.txt")
        assert {n: r.stdout for n, r in group.results.items()} == {
            g.name: f"written by ansible on {g.name}\n" for g in lab.guests}


def run_testinfra(tmp_path: Path, hosts: str, ssh_config: Path
                  ) -> subprocess.CompletedProcess[str]:
    """A child pytest running :data:`INFRA_TESTS` with testinfra, as the README does."""
    (tmp_path / "test_infra.py").write_text(INFRA_TESTS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", f"--hosts={hosts}",
         f"--ssh-config={ssh_config}", "test_infra.py"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")})


def test_testinfra_ssh_backend_through_the_exports(run: Session, tmp_path: Path) -> None:
    out = run_testinfra(tmp_path, "ssh://g000,ssh://extra-g000", run.run_dir / "ssh_config")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout, out.stdout
    for host in ("g000", "extra-g000"):
        assert f"test_hostname[ssh://{host}] PASSED" in out.stdout, out.stdout
    # The same checks through a copy whose pin for g000 is wrong: OpenSSH refuses it.
    tampered(run.run_dir, tmp_path / "t", "g000", "g001")
    bad = run_testinfra(tmp_path, "ssh://g000,ssh://extra-g000", tmp_path / "t" / "ssh_config")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "2 failed, 2 passed" in bad.stdout and "Host key verification failed" in bad.stdout


def test_testinfra_paramiko_backend_ignores_the_pinned_keys(run: Session,
                                                            tmp_path: Path) -> None:
    """Why the README names the ssh backend only: testinfra's paramiko backend reads
    HostName, Port, User and IdentityFile from ``--ssh-config`` but not UserKnownHostsFile,
    HostKeyAlias or ProxyJump, and accepts any host key with a warning (``WarningPolicy``).
    On netns guests it connects, but even to a guest whose pin is wrong."""
    tampered(run.run_dir, tmp_path / "t", "g000", "g001")
    out = run_testinfra(tmp_path, "paramiko://g000,paramiko://extra-g000",
                    tmp_path / "t" / "ssh_config")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout, out.stdout
    assert "Unknown ssh-ed25519 host key" in out.stdout, out.stdout


def test_cluster_guests_grouped_by_lab_host_and_jumped_to(tmp_path: Path) -> None:
    """A cluster lab's guests as its client exports them (one local, one behind its lab
    host): a group per lab host, and the jump comes from the ssh_config the inventory names
    (``ssh -G`` prints what OpenSSH would do for Ansible's ``-F <cfg> <ansible_host>``)."""
    specs = make_specs("r-s0", 3, ipaddress.IPv4Network("10.9.0.0/24"), prefix="s0g")
    jump = Jump("192.0.2.7", 22, "root", "192.0.2.7 ssh-ed25519 AAAAlabhost")
    guests = [Guest(specs[0], specs[0].address, lab_host="127.0.0.1:4001"),
              Guest(specs[1], specs[1].address, jump=jump, lab_host="lab-b.example"),
              Guest(specs[2], specs[2].address, jump=jump, lab_host="lab-b.example")]
    write_exports(tmp_path, [(guests, tmp_path / "id")])
    write_inventory(tmp_path, [InventoryLab("default", guests, tmp_path / "id")])
    a = Ansible(tmp_path / "ansible")
    try:
        listed = a("ansible-inventory", "-i", str(tmp_path / "inventory.yml"), "--list")
    finally:
        a.close()
    assert listed.returncode == 0 and "warning" not in listed.stderr.lower(), listed.stderr
    data: dict[str, Any] = json.loads(listed.stdout)
    assert data["labhost_127_0_0_1_4001"]["hosts"] == ["s0g000"]
    assert data["labhost_lab_b_example"]["hosts"] == ["s0g001", "s0g002"]
    assert data["lab_default"]["hosts"] == ["s0g000", "s0g001", "s0g002"]
    hv = data["_meta"]["hostvars"]["s0g001"]
    argv = ["ssh", "-G", *shlex.split(hv["ansible_ssh_common_args"]), hv["ansible_host"]]
    seen = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "proxyjump labhost-192.0.2.7-22" in seen and "stricthostkeychecking true" in seen
    assert f"hostname {specs[1].address}" in seen and "hostkeyalias s0g001" in seen


def test_wait_for_port_and_url_wait_until_the_guests_answer(run: Session,
                                                             tmp_path: Path) -> None:
    lab = run.labs[0]
    names = [g.name for g in lab.guests]
    server = lab.guests[1]
    addr = server.spec.address
    with Agents(lab.require_fleet(), run.recorder("helpers", 2, lab.name), tmp_path) as agents:
        # Its ready line comes 1.5 s before it listens: the waits below must really wait.
        started = agents.serve(
            "slow_http", ["sh", "-c", "echo starting; sleep 1.5; "
                          "exec python3 -m http.server 8080 --bind 0.0.0.0"],
            names=[server.name], ready_line="starting")
        assert started.ok, started.reason(server.name)
        t0 = time.monotonic()
        port = agents.wait_for_port(8080, names, timeout=20, host=addr)
        waited = time.monotonic() - t0
        assert sorted(port.results) == names and port.ok, {n: port.reason(n) for n in names}
        assert waited >= 1.0, waited
        url = agents.wait_for_url(f"http://{addr}:8080/", names, timeout=5)
        assert sorted(url.results) == names and url.ok, {n: url.reason(n) for n in names}
        # Nothing listens on 8081; a missing page is an answer, but not a success.
        miss = agents.wait_for_port(8081, names, timeout=1, host=addr)
        assert sorted(miss.failed) == names
        for n in names:
            assert miss.reason(n) == (
                f"{addr}:8081 did not answer within 1 s: [Errno 111] Connection refused")
        gone = agents.wait_for_url(f"http://{addr}:8080/nope", names[:1], timeout=1,
                                  op="wait_missing_page")
        assert gone.reason(names[0]) == (
            f"http://{addr}:8080/nope did not answer within 1 s: HTTP 404 File not found")
    # One row per guest and wait, failures with the guest's reason.
    t = load_timings(run.run_dir)
    t = t[t["scenario"] == "helpers"]
    for op, ok in (("wait_port_8080", True), ("wait_url", True), ("wait_port_8081", False)):
        rows = t[t["op"] == op]
        assert sorted(rows["guest"]) == names and rows["ok"].eq(ok).all(), rows
    assert t[t["op"] == "wait_port_8081"]["error"].str.contains("Connection refused").all()


def test_kept_cluster_lab_pinged_per_lab_host(image: Image, ansible: Ansible,
                                              tmp_path: Path) -> None:
    """``scalelab up --cluster local:2`` (a kept lab over two lab hosts): its run directory's
    inventory has a group per lab host, and Ansible reaches every guest of each one."""
    before = snapshot()
    up = scalelab("up", "--guests", "4", "--cluster", "local:2", "--reports-dir", str(tmp_path))
    assert up.returncode == 0, up.stderr
    run_dir = (tmp_path / "latest").resolve()
    try:
        inv = str(run_dir / "inventory.yml")
        data: dict[str, Any] = json.loads(ansible("ansible-inventory", "-i", inv,
                                                  "--list").stdout)
        by_host = {k: v["hosts"] for k, v in data.items() if k.startswith("labhost_")}
        assert sorted(map(sorted, by_host.values())) == [["s0g000", "s0g001"],
                                                         ["s1g000", "s1g001"]], data
        for group, hosts in by_host.items():
            out = ansible("ansible", "-i", inv, group, "-m", "ping")
            assert out.returncode == 0, out.stdout + out.stderr
            assert one_line_results(out.stdout) == dict.fromkeys(hosts, "SUCCESS"), out.stdout
    finally:
        ansible.close()  # its connections end before their guests do
        down = scalelab("down", run_dir.name)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30
    while (left := before.diff(snapshot())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left behind: {left}"


def test_readme_shows_the_commands_run_here() -> None:
    readme = (PROJECT / "README.md").read_text()
    for cmd in (
        "ANSIBLE_HOST_KEY_CHECKING=True ansible -i reports/latest/inventory.yml all -m ping",
        "ansible -i reports/latest/inventory.yml lab_extra -m ansible.builtin.command "
        "-a hostname",
        "ansible-playbook -i reports/latest/inventory.yml site.yml",
        "pytest --hosts=ssh://g000,ssh://extra-g000 --ssh-config=reports/latest/ssh_config "
        "test_infra.py",
    ):
        assert cmd in readme, cmd
    assert f"```yaml\n{PLAYBOOK}```" in readme
    assert f"```python\n{INFRA_TESTS}```" in readme
