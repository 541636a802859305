"""The xen backend for real: PV domUs on a Xen hypervisor nested under QEMU TCG.

``tests/xenlab`` boots Xen with a Debian dom0 (its port 22 forwarded to a loopback port, its
host key pinned before boot); the harness on this host drives it over SSH as
``xen://root@127.0.0.1:PORT`` and reaches the domUs through dom0 as a jump host.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from xenlab import BRIDGE_SUBNET, XenLab

from harness.backends import load_backend, parse_backend, xen
from harness.backends.base import RunContext
from harness.backends.xen import XenBackend, domain_name
from harness.errors import LabError, UserError
from harness.identity import XEN_OUI, KeyPair, make_specs
from harness.image.cache import Image
from harness.runinfo import new_run_id
from harness.state import RunState

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[1]


def _dom0_leftovers(lab: XenLab, run_id: str = "") -> list[str]:
    """Domains, writable disks and loop devices a run left on dom0."""
    out = lab.ssh("xl list | awk 'NR>1 {print $1}'; echo ---; "
                  "ls -A /var/lib/scalelab/xen/runs 2>/dev/null; echo ---; losetup -n -O BACK-FILE")
    domains, runs, loops = (part.split() for part in out.stdout.split("---"))
    left = [f"domain {d}" for d in domains if d.startswith(f"sl-{run_id}")]
    left += [f"run dir {r}" for r in runs if r.startswith(run_id)]
    left += [f"loop on {f}" for f in loops]
    return left


def test_scenarios_on_nested_xen(xen_lab: XenLab, xen_image: Image, tmp_path: Path) -> None:
    """The harness brings up 2 PV domUs of one read-only image, waits for pinned SSH through
    dom0, runs the SSH round trip and the CPU scenario, writes the report, tears down."""
    reports = tmp_path / "reports"
    argv = [
        sys.executable, "-m", "pytest", "scenarios/test_ssh_fanout.py", "scenarios/test_cpu.py",
        "--guests=2", f"--backend={xen_lab.backend_url()}", f"--subnet={BRIDGE_SUBNET}",
        f"--reports-dir={reports}", f"--image={xen_image.dir}", "--ready-timeout=600",
        "-p", "no:cacheprovider", "-q",
    ]
    t0 = time.monotonic()
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - t0
    assert run.returncode == 0, (
        f"{run.stdout[-4000:]}\n{run.stderr[-2000:]}\ndom0 console:\n{xen_lab.console(30)}")
    (run_dir,) = [d for d in reports.iterdir() if d.is_dir() and not d.is_symlink()]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["backend"]["name"] == "xen"
    assert (run_dir / "index.html").is_file()
    t = pd.read_parquet(run_dir / "timings.parquet")
    bringup = t[t["phase"] == "bringup"]
    for op in ("created", "started", "auth", "first_command"):
        assert set(bringup[bringup["op"] == op]["guest"]) == {"g000", "g001"}, op
    assert bringup["ok"].all()
    assert len(t[(t["phase"] == "workload") & t["ok"]]) > 0
    # Every guest was reached through dom0 with its pinned key, by name.
    assert "ProxyJump" in (run_dir / "ssh_config").read_text()
    assert _dom0_leftovers(xen_lab, info["run_id"]) == []
    check_domu_samples(pd.read_parquet(run_dir / "samples.parquet"), t)
    starts = bringup[bringup["op"] == "started"]["duration_s"]
    print(f"\nxen e2e: {took:.1f}s for the scenario run; xl create per domU "
          f"{', '.join(f'{s:.1f}s' for s in starts)}; bring-up "
          f"{info.get('bringup_seconds') or 0:.1f}s")


def check_domu_samples(s: pd.DataFrame, t: pd.DataFrame) -> None:
    """The sampler read each domU from dom0 (xl list, its vif, blkback): CPU that grew by
    about the CPU scenario's busy seconds, traffic on its vif, Xen's memory for it."""
    cpu_rows = t[(t["op"] == "cpu") & t["ok"]]
    for g in ("g000", "g001"):
        mine = s[s["guest"] == g]
        cpu = mine[mine["resource"] == "cpu_seconds"].sort_values("t")["value"]
        busy = cpu_rows[cpu_rows["guest"] == g]["duration_s"].sum()
        # Two domUs share dom0's vCPUs: each gets at least a quarter of its busy time.
        assert busy > 0 and len(cpu) >= 2, (g, busy)
        assert cpu.iloc[-1] - cpu.iloc[0] >= 0.25 * busy, (g, busy, cpu)
        for resource in ("net_rx_bytes", "net_tx_bytes"):
            v = mine[mine["resource"] == resource]["value"]
            assert len(v) and v.max() > 0, (g, resource)
        mem = mine[mine["resource"] == "memory_bytes"]["value"]
        assert len(mem) and (mem >= 64 << 20).all(), (g, mem)
        disk = mine[mine["resource"] == "disk_read_bytes"]["value"]
        intervals = s[s["resource"] == "sample_interval"]["value"].tolist()
        assert len(disk) and disk.max() > 0, (g, "blkback's block device counters", intervals)


def _context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunContext:
    import harness.state

    monkeypatch.setattr(harness.state, "STATE_ROOT", tmp_path / "state")
    run_id = new_run_id()
    state = RunState.create(run_id, backend="xen")
    subnet = ipaddress.IPv4Network(BRIDGE_SUBNET)
    return RunContext(run_id, state, tmp_path, KeyPair.generate().public_openssh,
                      options={"subnet": str(subnet), "subnet_gateway": "10.213.254.1/24"})


def _answers(lab: XenLab, address: str) -> bool:
    """Whether port 22 of a domU accepts a connection from dom0 (on the domUs' bridge)."""
    res = lab.ssh(f"timeout 3 bash -c 'echo > /dev/tcp/{address}/22' && echo yes || echo no")
    return res.stdout.strip() == "yes"


def test_halfway_failure_and_fault_hooks(xen_lab: XenLab, xen_image: Image, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A domU whose creation fails takes the ones already created down with it, and the
    error names it and quotes xl; pause/unpause, isolate/heal and destroy work as the fault
    hooks, each seen on dom0; teardown leaves nothing there."""
    backend = load_backend(parse_backend(xen_lab.backend_url(parallel="1")))
    assert isinstance(backend, XenBackend)
    ctx = _context(tmp_path, monkeypatch)
    specs = make_specs(ctx.run_id, 4, ipaddress.IPv4Network(BRIDGE_SUBNET), oui=XEN_OUI)
    bad = dataclasses.replace(specs[1], memory="16G")  # more than this Xen has
    try:
        backend.check(xen_image, 2)
        backend.prepare(xen_image, ctx)
        with pytest.raises(LabError) as err:
            backend.up([specs[0], bad])
        msg = str(err.value)
        print(f"\nhalf-way failure: {msg}")
        assert f"domU {domain_name(ctx.run_id, 'g001')} (guest g001)" in msg
        assert "xl create" in msg and "1 domU(s) already created were destroyed" in msg
        assert _dom0_leftovers(xen_lab, ctx.run_id) == [f"run dir {ctx.run_id}"]

        g2, g3 = backend.up([specs[2], specs[3]])
        name = domain_name(ctx.run_id, "g002")
        backend.pause(g2)
        assert "p" in backend.states()[name]
        backend.resume(g2)
        assert "p" not in backend.states()[name]
        assert (backend.guest_memory(g2) or 0) >= 128 << 20
        backend.kill(g2)
        assert name not in backend.states()

        # isolate/heal: the domU's vif on dom0 goes down and up, and so does its sshd's port.
        deadline = time.monotonic() + 300
        while not _answers(xen_lab, g3.spec.address):
            assert time.monotonic() < deadline, f"g003 never answered\n{xen_lab.console(30)}"
            time.sleep(2)
        vif = f"vif{g3.info['domid']}.0"
        backend.isolate([g3])
        try:
            assert "UP" not in xen_lab.ssh(f"ip -o link show {vif}").stdout.split(">")[0]
            assert not _answers(xen_lab, g3.spec.address)
        finally:
            backend.heal()
        assert ",UP" in xen_lab.ssh(f"ip -o link show {vif}").stdout.split(">")[0]
        deadline = time.monotonic() + 60
        while not _answers(xen_lab, g3.spec.address):
            assert time.monotonic() < deadline, "g003 did not answer again after heal"
            time.sleep(1)
    finally:
        problems = backend.down() + ctx.state.remove_all()
    assert problems == []
    assert _dom0_leftovers(xen_lab, ctx.run_id) == []


XEN_UP_AND_WAIT = """
import ipaddress, sys
from pathlib import Path
from harness.backends import load_backend, parse_backend
from harness.backends.base import RunContext
from harness.identity import XEN_OUI, KeyPair, make_specs
from harness.image.cache import resolve
from harness.state import RunState
url, image_dir, subnet, gateway, run_id, run_dir = sys.argv[1:7]
backend = load_backend(parse_backend(url))
state = RunState.create(run_id, backend="xen")
ctx = RunContext(run_id, state, Path(run_dir), KeyPair.generate().public_openssh,
                 options={"subnet": subnet, "subnet_gateway": gateway})
backend.prepare(resolve(image_dir), ctx)
(g,) = backend.up(make_specs(run_id, 1, ipaddress.IPv4Network(subnet), oui=XEN_OUI))
print("UP", g.info["domain"], flush=True)
sys.stdin.read()
"""


def test_sigkill_owner_then_clean(xen_lab: XenLab, xen_image: Image, tmp_path: Path) -> None:
    """The process that created a domU is SIGKILLed; `scalelab clean` removes, from the
    run's journal alone, the domain, its writable disk and its loop devices on dom0."""
    env = {**os.environ, "SCALELAB_STATE_ROOT": str(tmp_path / "state")}
    run_id = new_run_id()
    proc = subprocess.Popen(
        [sys.executable, "-c", XEN_UP_AND_WAIT, xen_lab.backend_url(), str(xen_image.dir),
         BRIDGE_SUBNET, "10.213.254.1/24", run_id, str(tmp_path)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("UP "), line
        domain = line.split()[1]
        # Before the kill: the owner is alive and its domU runs on dom0.
        assert proc.poll() is None
        assert domain in xen_lab.ssh("xl list").stdout
        assert _dom0_leftovers(xen_lab, run_id) != []
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert domain in xen_lab.ssh("xl list").stdout  # the domU outlives its owner...
    out = subprocess.run([sys.executable, "-m", "harness.cli", "clean", run_id], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert run_id in out.stdout
    assert domain not in xen_lab.ssh("xl list").stdout  # ...and clean destroys it
    assert _dom0_leftovers(xen_lab, run_id) == []
    assert not (tmp_path / "state" / run_id).exists()


def test_dom0_checks(xen_lab: XenLab, xen_image: Image, tmp_path: Path) -> None:
    """What the seed set by hand is checked on dom0, and a wrong host key is refused."""
    missing = load_backend(parse_backend(xen_lab.backend_url(bridge="nosuchbr")))
    with pytest.raises(UserError, match="bridge nosuchbr for the domUs' vifs does not exist"):
        missing.check(xen_image, 2)
    greedy = load_backend(parse_backend(xen_lab.backend_url(memory="4096")))
    with pytest.raises(UserError, match=r"Xen has \d+ MiB free; 2 domUs of 4096 MiB"):
        greedy.check(xen_image, 2)
    other = KeyPair.generate()
    wrong = tmp_path / "known_hosts"
    kt, blob = other.public_openssh.split()[:2]
    wrong.write_text(f"[127.0.0.1]:{xen_lab.port} {kt} {blob}\n")
    url = (f"xen://root@127.0.0.1:{xen_lab.port}?known_hosts={wrong}&key={xen_lab.key_path}"
           "&connect_timeout=30")
    with pytest.raises(UserError, match="host key mismatch"):
        load_backend(parse_backend(url)).check(xen_image, 2)
    # Pinning dom0's key on purpose records exactly the key it was booted with.
    recorded = xen.record_host_key(f"root@127.0.0.1:{xen_lab.port}", tmp_path / "pinned")
    assert recorded == xen_lab.known_hosts.read_text().strip()


def test_image_upload_to_dom0(xen_lab: XenLab, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An image dom0 does not have yet is copied once, holes and all, into its cache by
    bundle id (here a small stand-in: the real one came in on the seed disk)."""
    d = tmp_path / "img"
    d.mkdir()
    base = d / "base.img"
    with base.open("wb") as f:  # data, a hole, data, and a size that is no block multiple
        f.write(b"\x01" * 70_000)
        f.seek(5 << 20)
        f.write(b"\x02" * 12_345)
    (d / "vmlinuz").write_bytes(b"kernel" * 1000)
    (d / "initrd.img").write_bytes(b"")
    image = Image("tiny", d, {"digest": f"sha256:{time.time_ns()}", "size": 0, "mtime": 0,
                              "recipe": {"vm": True}})
    backend = load_backend(parse_backend(xen_lab.backend_url()))
    assert isinstance(backend, XenBackend)
    ctx = _context(tmp_path, monkeypatch)
    dom0 = backend._connect()
    bid = xen.bundle_id(image)
    try:
        files = backend._ensure_bundle(dom0, image, ctx)
        assert backend._ensure_bundle(dom0, image, ctx) == files  # the second: nothing to do
        local = subprocess.run(["sha256sum", str(base)], capture_output=True, text=True,
                               check=True).stdout.split()[0]
        remote = xen_lab.ssh(f"sha256sum {files['base.img']}; stat -c %s {files['base.img']};"
                             f" du -k {files['base.img']}").stdout.split()
        assert remote[0] == local and int(remote[2]) == base.stat().st_size
        assert int(remote[3]) < 1024  # KiB on disk: the hole stayed a hole
        assert ctx.state.remove_all() == []
    finally:
        xen_lab.ssh(f"rm -rf /var/lib/scalelab/xen/cache/{bid}")
