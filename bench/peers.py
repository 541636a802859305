"""Peer ways of bringing up N SSH guests from one Debian rootfs, for the bring-up benchmark.

Every peer gets the same things scalelab's guests get: an identity made on the host before
the guest starts (``harness.identity.make_specs``: name, IP, ed25519 host key), a veth on a
lab bridge with no default route and no NAT, and a real sshd on port 22 of its own IP. The
guest runs one init script (``run.sh``: address, loopback, ``exec sshd``) that is the same
for every peer; only the way the guest and its root filesystem are made differs:

- ``copy``: ``cp -a`` of the whole rootfs per guest, then the same namespaces as scalelab
  (``nsenter --net`` + ``unshare --mount --uts --pid``) and ``chroot``.
- ``nspawn``: ``systemd-nspawn --volatile=overlay`` on the shared read-only rootfs.
- ``lxc``: ``lxc-copy -e`` ephemeral overlay clones of a base container on that rootfs.
- ``podman``: ``podman run --rootfs <dir>:O`` (overlay on the shared rootfs).
"""

from __future__ import annotations

import abc
import ipaddress
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import ClassVar

import paramiko
from benchlib import Cleanup, du_bytes, ip_batch, kill_tree, run, umount

from harness.backends.base import Guest
from harness.identity import GuestSpec
from harness.ssh import HandshakeGate, ReadyOptions, connect_ready, host_keys_for

SSHD = ("/usr/sbin/sshd -D -e -f /etc/scalelab/sshd_config "
        "-h /etc/scalelab-id/ssh_host_ed25519_key "
        "-o AuthorizedKeysFile=/etc/scalelab-id/authorized_keys")


# -- network ---------------------------------------------------------------------------------


class LabNet:
    """A bridge holding the subnet's gateway address, and named netns with a veth each."""

    def __init__(self, tag: str, subnet: ipaddress.IPv4Network, cleanup: Cleanup) -> None:
        self.tag, self.subnet, self.cleanup = tag, subnet, cleanup
        self.bridge = f"sbp-{tag}"
        self.netns: list[str] = []

    def up(self) -> None:
        gateway = f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}"
        self.cleanup.add(f"bridge {self.bridge}",
                         lambda: ip_batch([f"link del {self.bridge}"], force=True))
        ip_batch([f"link add {self.bridge} type bridge",
                  f"addr add {gateway} dev {self.bridge}", f"link set {self.bridge} up"])

    def ns_name(self, spec: GuestSpec) -> str:
        return f"sbp-{self.tag}-{spec.index}"

    def add_guests(self, specs: Sequence[GuestSpec]) -> None:
        """One netns per guest with ``eth0`` (the guest's MAC) bridged to the host."""
        names = [self.ns_name(s) for s in specs]
        self.cleanup.add("netns", lambda: ip_batch([f"netns delete {n}" for n in names],
                                                   force=True))
        lines = []
        for s, ns in zip(specs, names, strict=True):
            veth = f"sbv{self.tag}{s.index:x}"
            lines += [f"netns add {ns}",
                      f"link add {veth} type veth peer name eth0 address {s.mac} netns {ns}",
                      f"link set {veth} master {self.bridge} up"]
        ip_batch(lines)
        self.netns += names


# -- identity --------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_identity(spec: GuestSpec, client_pub: str, where: Path) -> Path:
    """The guest's identity and init script in one directory (seen as /etc/scalelab-id)."""
    where.mkdir(parents=True, mode=0o755)
    _write_private(where / "ssh_host_ed25519_key", spec.host_key.private_openssh)
    _write_private(where / "authorized_keys", client_pub + "\n")
    (where / "hostname").write_text(spec.name + "\n")
    (where / "run.sh").write_text(
        "set -e\n"
        "ip link set lo up\n"
        f"ip addr add {spec.ip} dev eth0\n"
        "ip link set eth0 up\n"
        "mkdir -p /run/sshd\n"
        f"exec {SSHD}\n"
    )
    return where


# -- readiness -------------------------------------------------------------------------------


def ready_check(guest: Guest, key: paramiko.PKey, host_keys: paramiko.HostKeys,
                gate: HandshakeGate, timeout: float) -> paramiko.SSHClient:
    """scalelab's own readiness wait (pinned host key, RejectPolicy, ``cat /etc/hostname``
    must print the guest's name): the same check for every peer."""
    opts = ReadyOptions(timeout=timeout)
    return connect_ready(guest, key, host_keys, gate, lambda *a: None, opts)


# -- peers -----------------------------------------------------------------------------------


class Peer(abc.ABC):
    """One way of making guests. ``launch`` starts one guest; the driver waits on SSH."""

    name: ClassVar[str]
    commands: ClassVar[tuple[str, ...]] = ()
    uses_netns: ClassVar[bool] = True
    #: How many ``launch`` calls may run at once (the tool's CLI blocks while it works).
    launch_jobs: ClassVar[int] = 4

    def __init__(self, work: Path, base: Path, net: LabNet, cleanup: Cleanup) -> None:
        self.work, self.base, self.net, self.cleanup = work, base, net, cleanup
        self.roots: dict[str, int] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Per-repetition set-up (inside the timed region)."""

    @abc.abstractmethod
    def launch(self, spec: GuestSpec, ident: Path) -> None:
        """Start one guest whose identity directory is ``ident``."""

    def root_pids(self) -> dict[str, int]:
        """guest → root of its process tree on the host (the tool's monitor if any)."""
        return dict(self.roots)

    def disk(self) -> dict[str, int]:
        """guest → bytes of disk (or tmpfs) the guest's own layer or copy uses."""
        return {}

    def down(self) -> None:
        """Stop every guest (the cleanup stack removes the rest)."""
        for pid in self.roots.values():
            kill_tree(pid)


class _PopenPeer(Peer):
    """Guests that are a foreground process of ours (scalelab-like, copy, nspawn)."""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logf = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)
        finally:
            logf.close()
        with self._lock:
            self.roots[name] = proc.pid
        self.cleanup.add(f"{name} processes", lambda: (kill_tree(proc.pid), proc.wait(5)))


class CopyPeer(_PopenPeer):
    """A full ``cp -a`` of the rootfs per guest; then scalelab's namespaces and ``chroot``."""

    name = "copy-per-guest"
    commands = ("cp", "nsenter", "unshare", "chroot")

    def prepare(self) -> None:
        copies = self.work / "copies"
        copies.mkdir()
        self.cleanup.add("copies", lambda: shutil.rmtree(copies, ignore_errors=True))
        self.copies = copies

    def launch(self, spec: GuestSpec, ident: Path) -> None:
        root = self.copies / spec.name
        run(["cp", "-a", str(self.base), str(root)])
        run(["cp", "-a", str(ident), str(root / "etc/scalelab-id")])
        shutil.copyfile(ident / "hostname", root / "etc/hostname")
        r = shlex.quote(str(root))
        script = (f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && "
                  f"exec chroot {r} /bin/sh /etc/scalelab-id/run.sh")
        self._spawn(spec.name, [
            "nsenter", f"--net=/run/netns/{self.net.ns_name(spec)}", "--",
            "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
            "--propagation", "private", "--", "/bin/sh", "-c", script])

    def disk(self) -> dict[str, int]:
        return du_bytes({n: self.copies / n for n in self.roots})


class NspawnPeer(_PopenPeer):
    """``systemd-nspawn --volatile=overlay``: a tmpfs overlay on the shared rootfs."""

    name = "systemd-nspawn --volatile=overlay"
    commands = ("systemd-nspawn",)
    launch_jobs = 64  # nspawn runs in the foreground: launching is a fork

    def launch(self, spec: GuestSpec, ident: Path) -> None:
        machine = f"sbp{self.net.tag}-{spec.name}"
        propagate = Path("/run/systemd/nspawn/propagate") / machine
        self.cleanup.add(f"{propagate}", lambda: shutil.rmtree(propagate, ignore_errors=True))
        env = dict(os.environ, SYSTEMD_NSPAWN_LOCK="0")  # many containers, one directory
        self._spawn(spec.name, [
            "systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
            "--volatile=overlay", f"--directory={self.base}", f"--machine={machine}",
            f"--hostname={spec.name}",
            f"--network-namespace-path=/run/netns/{self.net.ns_name(spec)}",
            f"--bind-ro={ident}:/etc/scalelab-id", f"--bind-ro={ident}/hostname:/etc/hostname",
            "/bin/sh", "/etc/scalelab-id/run.sh"], env=env)


class LxcPeer(Peer):
    """``lxc-copy -e``: ephemeral overlay clones of one base container on the shared rootfs."""

    name = "lxc-copy -e (overlay)"
    commands = ("lxc-copy", "lxc-stop", "lxc-info")
    uses_netns = False  # LXC makes the veth itself (on our bridge)

    def prepare(self) -> None:
        path = self.work / "lxc"
        (path / "base").mkdir(parents=True)
        self.cleanup.add("lxc path", lambda: shutil.rmtree(path, ignore_errors=True))
        self.path = path
        (path / "base/config").write_text("\n".join([
            "lxc.uts.name = base",
            f"lxc.rootfs.path = dir:{self.base}",
            "lxc.net.0.type = veth",
            f"lxc.net.0.link = {self.net.bridge}",
            "lxc.net.0.flags = up",
            "lxc.net.0.hwaddr = 02:5b:00:xx:xx:xx",
            "lxc.init.cmd = /bin/sh /etc/scalelab-id/run.sh",
            "lxc.mount.auto = proc:mixed sys:ro",
            "lxc.autodev = 1",
            "lxc.pty.max = 16",
            "lxc.tty.max = 0",
            "lxc.console.path = none",
            "",
        ]))

    def launch(self, spec: GuestSpec, ident: Path) -> None:
        p = str(self.path)
        self.cleanup.add(f"lxc {spec.name}",
                         lambda: run(["lxc-stop", "-P", p, "-n", spec.name, "-k"], check=False))
        run(["lxc-copy", "-P", p, "-n", "base", "-N", spec.name, "-e", "-D", "-B", "overlay",
             "-m", f"bind={ident}:/etc/scalelab-id:ro"])
        pid = int(run(["lxc-info", "-P", p, "-n", spec.name, "-p", "-H"]).strip())
        monitor = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        with self._lock:
            self.roots[spec.name] = monitor

    def disk(self) -> dict[str, int]:
        return du_bytes({n: self.path / n / "overlay/delta" for n in self.roots})

    def down(self) -> None:
        names = list(self.roots)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: run(["lxc-stop", "-P", str(self.path), "-n", n, "-k"],
                                        check=False), names))


PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
          "--events-backend", "file"]


class PodmanPeer(Peer):
    """``podman run --rootfs <dir>:O``: an overlay on the shared rootfs, runc, cgroupfs."""

    name = "podman run --rootfs :O"
    commands = ("podman", "runc")

    def launch(self, spec: GuestSpec, ident: Path) -> None:
        cname = f"sbp{self.net.tag}-{spec.name}"
        self.cleanup.add(f"podman {cname}",
                         lambda: run([*PODMAN, "rm", "-f", "-t", "0", cname], check=False))
        run([*PODMAN, "run", "-d", "--name", cname, "--hostname", spec.name,
             f"--network=ns:/run/netns/{self.net.ns_name(spec)}", "--cap-add=NET_ADMIN",
             # No CAP_SYS_RESOURCE here: podman's default rlimits (nofile 1048576) fail.
             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             "-v", f"{ident}:/etc/scalelab-id:ro", "--rootfs", f"{self.base}:O",
             "/bin/sh", "/etc/scalelab-id/run.sh"])
        conmon, cid = run([*PODMAN, "inspect", "-f", "{{.State.ConmonPid}} {{.Id}}",
                           cname]).split()
        with self._lock:
            self.roots[spec.name] = int(conmon)
            self.ids = {**getattr(self, "ids", {}), spec.name: cid}

    def disk(self) -> dict[str, int]:
        store = Path("/run/containers/storage/overlay-containers")
        return du_bytes({n: store / c / "rootfs/upper" for n, c in getattr(self, "ids", {}).items()})

    def down(self) -> None:
        names = [f"sbp{self.net.tag}-{n}" for n in self.roots]
        if names:
            run([*PODMAN, "rm", "-f", "-t", "0", *names], check=False)


PEERS: dict[str, type[Peer]] = {
    "copy": CopyPeer, "nspawn": NspawnPeer, "lxc": LxcPeer, "podman": PodmanPeer,
}


def bring_up(peer: Peer, specs: Sequence[GuestSpec], idents: dict[str, Path],
             key: paramiko.PKey, ssh_concurrency: int, timeout: float
             ) -> dict[str, paramiko.SSHClient]:
    """Launch every guest (``peer.launch_jobs`` at a time) and wait until each answers SSH."""
    guests = {s.name: Guest(s, s.address, 22) for s in specs}
    host_keys = host_keys_for(guests.values())
    gate = HandshakeGate(ssh_concurrency)
    launch_gate = threading.BoundedSemaphore(peer.launch_jobs)

    def one(spec: GuestSpec) -> paramiko.SSHClient:
        with launch_gate:
            peer.launch(spec, idents[spec.name])
        return ready_check(guests[spec.name], key, host_keys, gate, timeout)

    clients: dict[str, paramiko.SSHClient] = {}
    with ThreadPoolExecutor(max_workers=min(len(specs), 256)) as pool:
        futures = {pool.submit(one, s): s.name for s in specs}
        for fut in as_completed(futures):
            clients[futures[fut]] = fut.result()
    return clients
