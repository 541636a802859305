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
import contextlib
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
from benchlib import Cleanup, du_bytes, ip_batch, kill_tree, run

from harness.backends.base import Guest
from harness.identity import GuestSpec
from harness.plumbing import host
from harness.ssh import HandshakeGate, ReadyOptions, connect_ready, host_keys_for, run_on

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
    client: paramiko.SSHClient = connect_ready(guest, key, host_keys, gate, lambda *a: None,
                                               opts)
    return client


# -- peers -----------------------------------------------------------------------------------


class Peer(abc.ABC):
    """One way of making guests. ``launch`` starts one guest; the driver waits on SSH.

    Every guest's name is in ``attempted`` before anything of it exists, and ``down`` (which
    the constructor registers in the cleanup stack) removes whatever was attempted.
    """

    name: ClassVar[str]
    commands: ClassVar[tuple[str, ...]] = ()
    uses_netns: ClassVar[bool] = True
    #: How many ``launch`` calls may run at once (the tool's CLI blocks while it works).
    launch_jobs: ClassVar[int] = 4

    def __init__(self, work: Path, base: Path, net: LabNet, cleanup: Cleanup) -> None:
        self.work, self.base, self.net = work, base, net
        self.roots: dict[str, int] = {}
        self.attempted: list[str] = []
        self._lock = threading.Lock()
        cleanup.add(f"{self.name} guests", self.down)

    def prepare(self) -> None:  # noqa: B027 - most peers need none
        """Per-repetition set-up (inside the timed region)."""

    def launch(self, spec: GuestSpec, ident: Path) -> None:
        """Start one guest whose identity directory is ``ident``."""
        with self._lock:
            self.attempted.append(spec.name)
        self._launch(spec, ident)

    @abc.abstractmethod
    def _launch(self, spec: GuestSpec, ident: Path) -> None: ...

    def _set_root(self, name: str, pid: int) -> None:
        with self._lock:
            self.roots[name] = pid

    def root_pids(self) -> dict[str, int]:
        """guest → root of its process tree on the host (the tool's monitor if any)."""
        return dict(self.roots)

    def disk(self, clients: dict[str, paramiko.SSHClient]) -> dict[str, int]:
        """guest → bytes of disk (or tmpfs) the guest's own layer or copy uses."""
        return {}

    def down(self) -> None:
        """Stop every guest attempted; idempotent."""
        for pid in self.roots.values():
            kill_tree(pid)


class _PopenPeer(Peer):
    """Guests that are a foreground process of ours (copy, nspawn)."""

    def __init__(self, work: Path, base: Path, net: LabNet, cleanup: Cleanup) -> None:
        super().__init__(work, base, net, cleanup)
        self._procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logf = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)
        finally:
            logf.close()
        self._set_root(name, proc.pid)
        with self._lock:
            self._procs.append(proc)

    def down(self) -> None:
        super().down()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs = []


class CopyPeer(_PopenPeer):
    """A full ``cp -a`` of the rootfs per guest; then scalelab's namespaces and ``chroot``."""

    name = "copy-per-guest"
    commands = ("cp", "nsenter", "unshare", "chroot")

    def prepare(self) -> None:
        self.copies = self.work / "copies"
        self.copies.mkdir()

    def _launch(self, spec: GuestSpec, ident: Path) -> None:
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

    def disk(self, clients: dict[str, paramiko.SSHClient]) -> dict[str, int]:
        return du_bytes({n: self.copies / n for n in self.roots})

    def down(self) -> None:
        super().down()
        if hasattr(self, "copies"):  # rm(1) is several times faster than rmtree here
            run(["rm", "-rf", "--one-file-system", str(self.copies)], check=False)


class NspawnPeer(_PopenPeer):
    """``systemd-nspawn --volatile=overlay``: a tmpfs overlay on the shared rootfs."""

    name = "systemd-nspawn --volatile=overlay"
    commands = ("systemd-nspawn",)
    launch_jobs = 64  # nspawn runs in the foreground: launching is a fork

    def machine(self, guest: str) -> str:
        return f"sbp{self.net.tag}-{guest}"

    def _launch(self, spec: GuestSpec, ident: Path) -> None:
        env = dict(os.environ, SYSTEMD_NSPAWN_LOCK="0")  # many containers, one directory
        self._spawn(spec.name, [
            "systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
            # It drops CAP_NET_ADMIN when joining a netns; run.sh sets the guest's address.
            "--volatile=overlay", "--capability=CAP_NET_ADMIN", f"--directory={self.base}",
            f"--machine={self.machine(spec.name)}", f"--hostname={spec.name}",
            f"--network-namespace-path=/run/netns/{self.net.ns_name(spec)}",
            f"--bind-ro={ident}:/etc/scalelab-id", f"--bind-ro={ident}/hostname:/etc/hostname",
            "/bin/sh", "/etc/scalelab-id/run.sh"], env=env)

    def disk(self, clients: dict[str, paramiko.SSHClient]) -> dict[str, int]:
        """The upper layer is a tmpfs nspawn hides from the host; ``statfs`` of an overlay
        root reports its upper file system, so ask each guest for the blocks used on ``/``."""
        out = {}
        for name, client in clients.items():
            res = run_on(client, "stat -f -c '%b %f %S' /", timeout=30)
            blocks, free, size = (int(x) for x in res.stdout.split())
            out[name] = (blocks - free) * size
        return out

    def down(self) -> None:
        super().down()
        for name in self.attempted:
            shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.machine(name),
                          ignore_errors=True)


class LxcPeer(Peer):
    """``lxc-copy -e``: ephemeral overlay clones of one base container on the shared rootfs."""

    name = "lxc-copy -e (overlay)"
    commands = ("lxc-copy", "lxc-stop", "lxc-info")
    uses_netns = False  # LXC makes the veth itself (on our bridge)

    def prepare(self) -> None:
        self.path = self.work / "lxc"
        (self.path / "base").mkdir(parents=True)
        (self.path / "base/config").write_text("\n".join([
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

    def _launch(self, spec: GuestSpec, ident: Path) -> None:
        p = str(self.path)
        run(["lxc-copy", "-P", p, "-n", "base", "-N", spec.name, "-e", "-D", "-B", "overlay",
             "-m", f"bind={ident}:/etc/scalelab-id:ro"])
        pid = int(run(["lxc-info", "-P", p, "-n", spec.name, "-p", "-H"]).strip())
        monitor = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        self._set_root(spec.name, monitor)

    def disk(self, clients: dict[str, paramiko.SSHClient]) -> dict[str, int]:
        return du_bytes({n: self.path / n / "overlay/delta" for n in self.roots})

    def down(self) -> None:
        if not hasattr(self, "path"):
            return
        stop = ["lxc-stop", "-P", str(self.path), "-k", "-n"]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: run([*stop, n], check=False), self.attempted))
        super().down()  # anything lxc-stop left
        shutil.rmtree(self.path, ignore_errors=True)


PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
          "--events-backend", "file"]
#: containers/storage bind-mounts its overlay directory onto itself on first use and keeps it.
PODMAN_STORE_MOUNT = "/var/lib/containers/storage/overlay"


class PodmanPeer(Peer):
    """``podman run --rootfs <dir>:O``: an overlay on the shared rootfs, runc, cgroupfs."""

    name = "podman run --rootfs :O"
    commands = ("podman", "runc")

    def __init__(self, work: Path, base: Path, net: LabNet, cleanup: Cleanup) -> None:
        super().__init__(work, base, net, cleanup)
        self.ids: dict[str, str] = {}
        self.store_was_mounted = host.mounted(PODMAN_STORE_MOUNT)

    def cname(self, guest: str) -> str:
        return f"sbp{self.net.tag}-{guest}"

    def _launch(self, spec: GuestSpec, ident: Path) -> None:
        cname = self.cname(spec.name)
        run([*PODMAN, "run", "-d", "--name", cname, "--hostname", spec.name,
             f"--network=ns:/run/netns/{self.net.ns_name(spec)}", "--cap-add=NET_ADMIN",
             # No CAP_SYS_RESOURCE here: podman's default rlimits (nofile 1048576) fail.
             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             "-v", f"{ident}:/etc/scalelab-id:ro", "--rootfs", f"{self.base}:O",
             "/bin/sh", "/etc/scalelab-id/run.sh"])
        conmon, cid = run([*PODMAN, "inspect", "-f", "{{.State.ConmonPid}} {{.Id}}",
                           cname]).split()
        with self._lock:
            self.ids[spec.name] = cid
        self._set_root(spec.name, int(conmon))

    def disk(self, clients: dict[str, paramiko.SSHClient]) -> dict[str, int]:
        store = Path("/run/containers/storage/overlay-containers")
        return du_bytes({n: store / c / "rootfs/upper" for n, c in self.ids.items()})

    def down(self) -> None:
        if self.attempted:
            run([*PODMAN, "rm", "-f", "-t", "0", "-i",
                 *[self.cname(n) for n in self.attempted]], check=False)
        super().down()
        if not self.store_was_mounted and host.mounted(PODMAN_STORE_MOUNT):
            run(["umount", PODMAN_STORE_MOUNT], check=False)  # the benchmark's, not the host's


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
