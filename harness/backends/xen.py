"""The xen backend: PV domUs on a Xen dom0, driven with ``xl``, on this host or over SSH.

The seed's system.  Every domU boots the image's kernel and initramfs with the shared base
image attached read-only (``xvda``) and a small writable disk of its own (``xvdb``), which
the initramfs makes the upper layer of an overlayfs root.  Each writable disk is built on
this host with the guest's identity inside (so its host key is pinned before it boots) and
copied to dom0.  Domain configs are rendered from ``templates/xl.cfg.j2``.

    xen://local                        this host is dom0: xl runs here, guests sit on its bridge
    xen://root@dom0:22?known_hosts=F   xl runs on dom0 over SSH; the guests are reached
                                       through dom0 as an SSH jump host

Options (``?k=v&...``): ``known_hosts`` (file pinning dom0's host key), ``key`` (private key
for dom0), ``bridge`` (default xenbr0), ``memory`` (MiB per domU, default 256), ``vcpus``,
``disk`` (writable disk MiB, default 64), ``workdir`` (on dom0, default /var/lib/scalelab/xen),
``parallel`` (concurrent ``xl create``), ``connect_timeout`` (seconds), ``init`` (``lean``,
the image's small init, or ``systemd``), ``cmdline`` (added to every domU's kernel command
line).

dom0's host key is never learnt from the network while a lab runs: it must be in
``known_hosts`` (or ``~/.ssh/known_hosts``) already; ``python -m harness.backends.xen
record-host-key root@dom0 FILE`` records it once, on purpose, and prints its fingerprint.

Everything made on dom0 (run directory, writable disks, configs, domUs, the bridge address)
is journalled as a ``callback`` resource before it is made, so ``scalelab clean`` can take it
down from another process.
"""

from __future__ import annotations

import abc
import argparse
import atexit
import base64
import contextlib
import hashlib
import ipaddress
import json
import math
import posixpath
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import paramiko

from harness.backends.base import Backend, FaultNotSupported, Guest, Jump, RunContext, now_ns
from harness.backends.qemu import make_guest_disk
from harness.errors import LabError, UserError
from harness.identity import XEN_OUI, GuestSpec
from harness.image.cache import Image, cache_dir
from harness.image.vm import GUEST_INIT
from harness.ssh import GuestError, run_on
from harness.state import Resource, teardown

DEFAULT_WORKDIR = "/var/lib/scalelab/xen"
#: Seconds for a quick command on dom0 (``xl info``, ``xl list``, ``mkdir``...).
SHORT_TIMEOUT = 60.0
#: ``xl create`` of a PV domU takes ~13 s on a nested Xen under QEMU TCG.
CREATE_TIMEOUT = 300.0
#: What libxl says when a hotplug script was too slow (a loaded dom0): worth one retry.
TRANSIENT = ("because of timeout", "scripts/block failed", "unable to add disk devices",
             "unable to add vif devices", "scripts/vif-bridge failed")


# -- options --------------------------------------------------------------------------------


def _int_option(options: dict[str, str], key: str, default: int, low: int = 1) -> int:
    raw = options.get(key)
    if raw in (None, ""):
        return default
    text = str(raw).strip().upper().removesuffix("IB").removesuffix("B")
    factor = 1
    if key in ("memory", "disk") and text.endswith(("M", "G")):
        factor = 1024 if text.endswith("G") else 1
        text = text[:-1]
    try:
        value = int(text) * factor
    except ValueError:
        raise UserError(f"xen option {key}={raw!r} is not a whole number") from None
    if value < low:
        raise UserError(f"xen option {key}={raw!r} must be at least {low}")
    return value


def _choice(options: dict[str, str], key: str, allowed: tuple[str, ...]) -> str:
    value = options.get(key) or allowed[0]
    if value not in allowed:
        raise UserError(f"xen option {key}={value!r}: use one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Target:
    """Where dom0 is and how to log in; JSON-serialisable for the journal's callbacks."""

    local: bool
    host: str = ""
    port: int = 22
    user: str = "root"
    known_hosts: str | None = None
    key: str | None = None
    connect_timeout: float = 15.0

    @property
    def label(self) -> str:
        return "this host" if self.local else f"{self.user}@{self.host}:{self.port}"

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "local": self.local, "host": self.host, "port": self.port, "user": self.user,
            "known_hosts": self.known_hosts, "key": self.key,
            "connect_timeout": self.connect_timeout,
        }

    @property
    def pool_key(self) -> tuple[Any, ...]:
        return (self.local, self.host, self.port, self.user, self.key, self.known_hosts)


@dataclass(frozen=True)
class XenOptions:
    """The ``xen://`` URL and its ``?k=v`` options, checked."""

    target: Target
    bridge: str = "xenbr0"
    memory_mib: int = 256
    vcpus: int = 1
    disk_mib: int = 64
    workdir: str = DEFAULT_WORKDIR
    parallel: int = 2
    cmdline: str = ""
    init: str = "lean"

    KNOWN = frozenset({
        "host", "user", "port", "known_hosts", "key", "bridge", "memory", "vcpus", "disk",
        "workdir", "parallel", "connect_timeout", "cmdline", "init",
    })

    @classmethod
    def parse(cls, options: dict[str, str]) -> XenOptions:
        unknown = sorted(set(options) - cls.KNOWN)
        if unknown:
            raise UserError(
                f"unknown xen option(s) {', '.join(unknown)}: known are "
                f"{', '.join(sorted(cls.KNOWN - {'host', 'user', 'port'}))}"
            )
        host = options.get("host") or ""
        if not host:
            raise UserError("the xen backend needs a dom0: xen://local or xen://root@HOST[:PORT]")
        local = host == "local"
        try:
            timeout = float(options.get("connect_timeout") or 15.0)
        except ValueError:
            raise UserError(f"xen option connect_timeout={options['connect_timeout']!r} "
                            "is not a number of seconds") from None
        for name in ("known_hosts", "key"):
            path = options.get(name)
            if path and not Path(path).expanduser().is_file():
                raise UserError(f"xen option {name}={path}: no such file")
        target = Target(
            local=local,
            host="" if local else host,
            port=_int_option(options, "port", 22),
            user=options.get("user") or "root",
            known_hosts=str(Path(options["known_hosts"]).expanduser().resolve())
            if options.get("known_hosts") else None,
            key=str(Path(options["key"]).expanduser().resolve()) if options.get("key") else None,
            connect_timeout=timeout,
        )
        bridge = options.get("bridge") or "xenbr0"
        if not bridge.replace("-", "").replace("_", "").replace(".", "").isalnum() \
                or len(bridge) > 15:
            raise UserError(f"xen option bridge={bridge!r} is not a network interface name")
        workdir = options.get("workdir") or DEFAULT_WORKDIR
        if not workdir.startswith("/") or any(c in workdir for c in "\"'\\,\n "):
            raise UserError(f"xen option workdir={workdir!r} must be a plain absolute path")
        return cls(
            target=target,
            bridge=bridge,
            memory_mib=_int_option(options, "memory", 256, low=32),
            vcpus=_int_option(options, "vcpus", 1),
            disk_mib=_int_option(options, "disk", 64, low=8),
            workdir=workdir.rstrip("/") or "/",
            parallel=_int_option(options, "parallel", 2),
            cmdline=options.get("cmdline", ""),
            init=_choice(options, "init", ("lean", "systemd")),
        )


# -- talking to dom0 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    def message(self) -> str:
        """What the command said, for an error line: its first error lines (libxl's first
        error is the cause, the rest is the clean-up), else its last lines."""
        text = (self.err.strip() or self.out.strip() or f"exit status {self.rc}")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return " | ".join(errors[:3] if errors else lines[-4:])


class Dom0(abc.ABC):
    """Commands and files on dom0."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def label(self) -> str:
        return self.target.label

    @abc.abstractmethod
    def run(self, argv: Sequence[str], *, timeout: float = SHORT_TIMEOUT,
            stdin: bytes | None = None) -> Result:
        """Run ``argv`` on dom0 (no shell: every argument is passed as is)."""

    @abc.abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to dom0, keeping holes (sparse disks stay sparse)."""

    @abc.abstractmethod
    def write_text(self, remote: str, text: str) -> None:
        """Create a file on dom0 with ``text`` in it."""

    def close(self) -> None:  # noqa: B027 - nothing to drop for a local dom0
        """Drop the connection."""

    def sh(self, script: str, *args: str, timeout: float = SHORT_TIMEOUT) -> Result:
        return self.run(["sh", "-c", script, "sh", *args], timeout=timeout)

    def check(self, argv: Sequence[str], what: str, *, timeout: float = SHORT_TIMEOUT) -> str:
        res = self.run(argv, timeout=timeout)
        if res.rc != 0:
            raise LabError(f"{what} on dom0 {self.label} failed: {res.message()}")
        return res.out


class LocalDom0(Dom0):
    """This host is dom0."""

    def run(self, argv: Sequence[str], *, timeout: float = SHORT_TIMEOUT,
            stdin: bytes | None = None) -> Result:
        try:
            out = subprocess.run(list(argv), input=stdin, capture_output=True,
                                 timeout=timeout, check=False)
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{shlex.join(argv)[:80]} did not finish in {timeout:.0f}s")
        return Result(out.returncode, out.stdout.decode(errors="replace"),
                      out.stderr.decode(errors="replace"))

    def put(self, local: Path, remote: str) -> None:
        subprocess.run(["cp", "--sparse=always", str(local), remote], check=True)

    def write_text(self, remote: str, text: str) -> None:
        Path(remote).write_text(text)


class RemoteDom0(Dom0):
    """dom0 over SSH (paramiko), its host key pinned."""

    def __init__(self, target: Target, client: paramiko.SSHClient) -> None:
        super().__init__(target)
        self.client = client

    def run(self, argv: Sequence[str], *, timeout: float = SHORT_TIMEOUT,
            stdin: bytes | None = None) -> Result:
        try:
            res = run_on(self.client, shlex.join(argv), timeout=timeout, stdin=stdin,
                         guest="dom0")
        except GuestError as exc:
            return Result(124 if exc.error_class == "timeout" else 255, "", exc.message)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            return Result(255, "", f"lost the connection to dom0: {exc}")
        return Result(res.exit_status, res.stdout, res.stderr)

    def put(self, local: Path, remote: str) -> None:
        # One SFTP session per upload: uploads run in parallel threads.
        with self.client.open_sftp() as sftp:
            sftp_put_sparse(sftp, local, remote)

    def write_text(self, remote: str, text: str) -> None:
        with self.client.open_sftp() as sftp, sftp.open(remote, "w") as f:
            f.write(text.encode())

    @property
    def jump_client(self) -> paramiko.SSHClient:
        return self.client

    def server_key_line(self) -> str:
        transport = self.client.get_transport()
        assert transport is not None
        key = transport.get_remote_server_key()
        return known_hosts_line(self.target.host, self.target.port, key)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def sftp_put_sparse(sftp: paramiko.SFTPClient, local: Path, remote: str,
                    block: int = 1 << 16) -> None:
    """Upload ``local`` writing only its non-zero blocks, then set the size: a 64 MiB
    writable disk with a few hundred KiB in it costs a few hundred KiB on the wire."""
    size = local.stat().st_size
    zero = bytes(block)
    with local.open("rb") as src, sftp.open(remote, "wb") as dst:
        dst.set_pipelined(True)
        offset = 0
        while True:
            chunk = src.read(block)
            if not chunk:
                break
            if chunk != zero[: len(chunk)]:
                dst.seek(offset)
                dst.write(chunk)
            offset += len(chunk)
    sftp.truncate(remote, size)


def known_hosts_line(host: str, port: int, key: paramiko.PKey) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.get_name()} {key.get_base64()}"


def _known_hosts_files(target: Target) -> list[Path]:
    if target.known_hosts:
        return [Path(target.known_hosts)]
    candidates = [Path.home() / ".ssh/known_hosts", cache_dir() / "xen_known_hosts"]
    return [p for p in candidates if p.is_file()]


def connect(target: Target) -> paramiko.SSHClient:
    """Log in to dom0 with its host key pinned; every failure is one clear UserError."""
    client = paramiko.SSHClient()
    host_keys = client.get_host_keys()  # pinned keys only; never saved back
    files = _known_hosts_files(target)
    for f in files:
        try:
            host_keys.load(str(f))
        except (OSError, paramiko.SSHException) as exc:
            raise UserError(f"cannot read known_hosts file {f}: {exc}") from None
    where = target.label
    lookup = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    if host_keys.lookup(lookup) is None:
        shown = ", ".join(str(f) for f in files) or "no known_hosts file"
        raise UserError(
            f"dom0 {where}: its host key is not pinned ({shown}); give known_hosts=FILE, or "
            f"record it once with `python -m harness.backends.xen record-host-key "
            f"{target.user}@{target.host}:{target.port} FILE` and check the fingerprint"
        )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    t = target.connect_timeout
    try:
        client.connect(
            target.host, port=target.port, username=target.user,
            key_filename=target.key, look_for_keys=target.key is None,
            allow_agent=target.key is None, timeout=t, banner_timeout=t, auth_timeout=t,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise UserError(
            f"dom0 {where}: host key mismatch: it offered {exc.key.get_name()} "
            f"{exc.key.get_fingerprint().hex()} but the pinned key is "
            f"{exc.expected_key.get_fingerprint().hex()} (man in the middle, or dom0 was "
            "reinstalled: check, then update known_hosts)"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise UserError(f"dom0 {where}: login refused ({exc}); give key=PATH for its "
                        "authorized key") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        client.close()
        raise UserError(f"dom0 {where} is not reachable within {t:.0f}s: "
                        f"{exc or type(exc).__name__}") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return client


_POOL: dict[tuple[Any, ...], Dom0] = {}
_POOL_LOCK = threading.Lock()


def dom0_for(target: Target) -> Dom0:
    """One connection per dom0 and process, shared by the backend and cleanup callbacks."""
    with _POOL_LOCK:
        d = _POOL.get(target.pool_key)
        if isinstance(d, RemoteDom0):
            transport = d.client.get_transport()
            if transport is None or not transport.is_active():
                d.close()
                d = None
        if d is None:
            d = LocalDom0(target) if target.local else RemoteDom0(target, connect(target))
            _POOL[target.pool_key] = d
        return d


@atexit.register
def _close_pool() -> None:
    with _POOL_LOCK:
        for d in _POOL.values():
            d.close()
        _POOL.clear()


# -- cleanup callbacks (run from the journal by teardown / `scalelab clean`) ----------------

#: (pool key, what) of things this process already removed: their callbacks have no work.
_DONE: set[tuple[Any, ...]] = set()


def _target(kwargs_target: dict[str, Any]) -> Target:
    return Target(**kwargs_target)


def _done_key(target: Target, res: Resource) -> tuple[Any, ...]:
    """The ``_DONE`` entry of a journal callback of this module."""
    kw = res.get("kwargs", {})
    if "path" in kw:
        return (target.pool_key, "path", kw["path"])
    if "loops" in kw:
        return (target.pool_key, "loops", tuple(map(tuple, kw["loops"])))
    if "cidr" in kw:
        return (target.pool_key, "address", kw["bridge"], kw["cidr"])
    return (target.pool_key, "domain", kw.get("name"))


def domain_loops(d: Dom0, name: str) -> list[list[str]]:
    """[loop device, backing file] of each file-backed disk of domain ``name``."""
    res = d.sh('id=$(xl domid "$1") && xenstore-ls -f "/local/domain/0/backend/vbd/$id"', name)
    fields: dict[str, dict[str, str]] = {}
    for line in res.out.splitlines():
        path, sep, value = line.partition(" = ")
        if not sep:
            continue
        devpath, _, key = path.rpartition("/")
        if key in ("node", "params"):
            fields.setdefault(devpath, {})[key] = value.strip().strip('"')
    return [[f["node"], f["params"]] for f in fields.values()
            if f.get("node", "").startswith("/dev/loop") and f.get("params")]


def destroy_on(d: Dom0, name: str) -> None:
    """``xl destroy`` domain ``name`` if it exists, then detach the loop devices it had
    (libxl's block script sometimes leaves them: it reads the device back from xenstore,
    racing the removal of the backend's entries)."""
    if d.run(["xl", "domid", name]).rc != 0:
        return
    loops = domain_loops(d, name)
    res = d.run(["xl", "destroy", name], timeout=CREATE_TIMEOUT)
    if res.rc != 0 and d.run(["xl", "domid", name]).rc == 0:
        raise LabError(f"xl destroy {name} on dom0 {d.label}: {res.message()}")
    if loops:
        _release(d, loops)


def destroy_domain(target: dict[str, Any], name: str) -> None:
    """Destroy domU ``name`` if it exists (journal callback)."""
    t = _target(target)
    if (t.pool_key, "domain", name) not in _DONE:
        destroy_on(dom0_for(t), name)


def remove_path(target: dict[str, Any], path: str) -> None:
    """Remove a file or directory this run made on dom0 (journal callback)."""
    t = _target(target)
    if (t.pool_key, "path", path) in _DONE:
        return
    if not path.startswith("/") or path.rstrip("/").count("/") < 3:
        raise LabError(f"refusing to remove {path!r} on dom0: not a scalelab path")
    d = dom0_for(t)
    # Loop devices still on a file (a domU that died half-way) would keep it busy.
    d.sh('for l in $(losetup -n -O NAME -j "$1" 2>/dev/null); do losetup -d "$l"; done; '
         'rm -rf -- "$1"', path)


#: Detach loop devices that still back the file they backed when this run attached them
#: and that no live vbd backend uses, under the hotplug scripts' own lock.
_RELEASE_LOOPS = r"""
lock=/run/xen-hotplug/block
[ -d /run/xen-hotplug ] || lock=/dev/null
exec 9>>"$lock"; flock -w 60 9 2>/dev/null
used=" $(xenstore-ls -f /local/domain/0/backend/vbd 2>/dev/null |
        sed -n 's|.*/node = "\(.*\)"$|\1|p' | tr '\n' ' ') "
while [ $# -gt 1 ]; do
    dev=$1; file=$(readlink -f "$2"); shift 2
    [ "$(cat "/sys/block/${dev#/dev/}/loop/backing_file" 2>/dev/null)" = "$file" ] || continue
    case "$used" in *" $dev "*) continue ;; esac
    losetup -d "$dev" || echo "cannot detach $dev ($file)" >&2
done
"""


def loops_on(d: Dom0, files: Sequence[str]) -> list[tuple[str, str]]:
    """(loop device, backing file) of every loop device on dom0 backed by one of ``files``."""
    out = d.run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"]).out
    wanted = set(files)
    pairs = []
    for line in out.splitlines():
        dev, _, back = line.strip().partition(" ")
        if back.strip() in wanted:
            pairs.append((dev, back.strip()))
    return pairs


def _release(d: Dom0, loops: list[list[str]]) -> None:
    res = d.sh(_RELEASE_LOOPS, *[x for pair in loops for x in pair])
    if res.rc != 0 or res.err.strip():
        raise LabError(f"releasing loop devices on dom0 {d.label}: {res.message()}")


def release_loops(target: dict[str, Any], loops: list[list[str]]) -> None:
    """Detach the loop devices a run's domUs had, if libxl left them (journal callback)."""
    t = _target(target)
    if (t.pool_key, "loops", tuple(map(tuple, loops))) not in _DONE:
        _release(dom0_for(t), loops)


def remove_address(target: dict[str, Any], bridge: str, cidr: str) -> None:
    """Remove the lab's address from dom0's bridge (journal callback)."""
    t = _target(target)
    if (t.pool_key, "address", bridge, cidr) in _DONE:
        return
    dom0_for(t).run(["ip", "addr", "del", cidr, "dev", bridge])


# -- domU configuration ------------------------------------------------------------------------


def xl_string(value: object) -> str:
    """``value`` as an xl config string literal; refuses what xl's parser cannot carry."""
    text = str(value)
    bad = [c for c in text if c in "\"\\" or not c.isprintable()]
    if bad:
        raise UserError(f"cannot put {text!r} in an xl config: {bad[0]!r} is not allowed")
    return f'"{text}"'


def disk_spec(vdev: str, access: str, target: str) -> str:
    """An xl disk spec (xl-disk-configuration(5)); ``target=`` comes last as it must."""
    if access not in ("ro", "rw"):
        raise ValueError(access)
    return f"format=raw,vdev={vdev},access={access},target={target}"


def vif_spec(mac: str, bridge: str) -> str:
    """An xl vif spec (xl-network-configuration(5))."""
    return f"mac={mac},bridge={bridge}"


def guest_cmdline(spec: GuestSpec, *, systemd: bool = False, extra: str = "") -> str:
    """The domU kernel command line, as the image's initramfs and lean init read it: the
    shared root read-only, the domU's own disk as the overlay's upper layer, its name and
    address (the kernel's ``ip=`` syntax, no gateway: a guest has no way out of the lab)."""
    net = spec.ip.network
    parts = [
        "console=hvc0", "root=/dev/xvda", "ro", "rootfstype=ext4", "panic=-1",
        "net.ifnames=0", f"hostname={spec.name}",
        f"ip={spec.address}:::{net.netmask}:{spec.name}:eth0:off",
        "overlayroot=disk:/dev/xvdb",
    ]
    parts += (["init=/lib/systemd/systemd", "systemd.show_status=false"] if systemd
              else [f"init={GUEST_INIT}"])
    if extra:
        parts.append(extra)
    return " ".join(parts)


@dataclass(frozen=True)
class DomainConfig:
    """Everything one domU's xl config says."""

    name: str
    guest: str
    run_id: str
    kernel: str
    ramdisk: str
    extra: str
    memory_mib: int
    vcpus: int
    disks: tuple[str, ...]
    vifs: tuple[str, ...]


_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("harness", "templates"),
            autoescape=False,  # not HTML: every value goes through |xlstr instead
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        env.filters["xlstr"] = xl_string
        _ENV = env
    return _ENV


def render_config(cfg: DomainConfig) -> str:
    return _env().get_template("xl.cfg.j2").render(**cfg.__dict__)


def domain_name(run_id: str, guest: str) -> str:
    return f"sl-{run_id}-{guest}"


# -- the image bundle on dom0 ------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


BUNDLE_FILES = ("base.img", "vmlinuz", "initrd.img")


def bundle_id(image: Image) -> str:
    """Names the image + kernel + initramfs on dom0: a new build gets a new directory."""
    h = hashlib.sha256(image.digest.encode())
    for p in (image.kernel, image.initrd):
        h.update(_sha256(p).encode())
    return h.hexdigest()[:24]


def bundle_sources(image: Image) -> dict[str, Path]:
    return dict(zip(BUNDLE_FILES, (image.path, image.kernel, image.initrd), strict=True))


# -- the backend -------------------------------------------------------------------------------


@dataclass
class _Domain:
    guest: str
    name: str
    cfg: str
    disk: str
    domid: int | None = None
    loops: list[list[str]] = field(default_factory=list)
    retries: int = 0


@dataclass
class Dom0Facts:
    """What ``check`` learnt about dom0."""

    xen_version: str = ""
    free_memory_mib: int = 0
    nr_cpus: int = 0
    bridge_addresses: list[str] = field(default_factory=list)


class XenBackend(Backend):
    name = "xen"
    faults = frozenset({"kill", "pause", "isolate"})
    mac_oui = XEN_OUI

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.opts = XenOptions.parse(self.options)
        self.jump_clients: dict[Jump, paramiko.SSHClient] = {}
        self.jump: Jump | None = None
        self.dom0: Dom0 | None = None
        self.facts: Dom0Facts | None = None
        self.ctx: RunContext | None = None
        self.image: Image | None = None
        self.run_dir = ""
        self.files: dict[str, str] = {}
        self.domains: dict[str, _Domain] = {}
        self._resources: list[Resource] = []
        self._address: str | None = None
        self._isolated: set[str] = set()
        self._lock = threading.Lock()

    @property
    def target(self) -> Target:
        return self.opts.target

    # -- checks ------------------------------------------------------------------------------

    def check(self, image: Image, n_guests: int) -> None:
        if not image.vm or not image.kernel.is_file() or not image.initrd.is_file():
            raise UserError(
                f"image {image.key} was built without VM parts (kernel, initramfs), which "
                "xen domUs boot: build it with `scalelab image build --vm` or give a VM image"
            )
        image.check()
        self.facts = self.probe(n_guests)

    def _connect(self) -> Dom0:
        if self.dom0 is None:
            if self.target.local and shutil.which("xl") is None:
                raise UserError("xen://local: there is no `xl` on this host: it is not a Xen "
                                "dom0 (apt-get install xen-utils, boot Xen), or use xen://HOST")
            self.dom0 = dom0_for(self.target)
        return self.dom0

    def probe(self, n_guests: int) -> Dom0Facts:
        """Check on dom0 what the seed set up by hand; say clearly what is missing."""
        d = self._connect()
        where = f"dom0 {d.label}"
        info = d.run(["xl", "info"], timeout=SHORT_TIMEOUT)
        if info.rc == 127 or ("not found" in info.err and info.rc != 0):
            raise UserError(f"{where} has no `xl`: install xen-utils there (and boot it "
                            "under Xen), or point --backend at a Xen dom0")
        if info.rc != 0:
            raise UserError(f"`xl info` on {where} does not answer: {info.message()} "
                            "(is Xen running, and xenstored started?)")
        fields = _xl_info(info.out)
        facts = Dom0Facts(
            xen_version=f"{fields.get('xen_major', '?')}.{fields.get('xen_minor', '?')}",
            free_memory_mib=int(fields.get("free_memory", "0") or 0),
            nr_cpus=int(fields.get("nr_cpus", "0") or 0),
        )
        problems = []
        br = self.opts.bridge
        probe = d.sh(_PROBE, br).out
        kv = dict(ln.split("=", 1) for ln in probe.splitlines() if "=" in ln)
        if kv.get("bridge") != "yes":
            what = "is not a bridge" if kv.get("bridge") == "notbridge" else "does not exist"
            problems.append(
                f"the bridge {br} for the domUs' vifs {what} (ip link add {br} type bridge && "
                f"ip link set {br} up; or give bridge=NAME)"
            )
        elif kv.get("bridge_up") != "up":
            problems.append(f"the bridge {br} is down (ip link set {br} up)")
        need_loops = 2 * n_guests
        if kv.get("loop_driver") != "yes":
            problems.append("there is no loop driver (modprobe loop): each domU's disks are "
                            "files on loop devices")
        elif kv.get("loop_control") != "yes":
            free = int(kv.get("loop_free", "0") or 0)
            if free < need_loops:
                problems.append(
                    f"{free} free loop devices for {n_guests} domUs that need {need_loops} "
                    f"(modprobe -r loop; modprobe loop max_loop={need_loops + 16})"
                )
        for tool in ("mkdir", "rm", "losetup", "ip"):
            if kv.get(f"has_{tool}") != "yes":
                problems.append(f"`{tool}` is missing")
        need_mem = n_guests * self.opts.memory_mib
        if facts.free_memory_mib and facts.free_memory_mib < need_mem:
            problems.append(
                f"Xen has {facts.free_memory_mib} MiB free; {n_guests} domUs of "
                f"{self.opts.memory_mib} MiB need {need_mem} (lower memory= or --guests, or "
                "give dom0 less with dom0_mem=)"
            )
        if problems:
            raise UserError(f"{where} is not ready for {n_guests} domUs: " + "; ".join(problems))
        facts.bridge_addresses = kv.get("bridge_addrs", "").split()
        return facts

    # -- prepare -----------------------------------------------------------------------------

    def _record(self, target: str, **kwargs: Any) -> None:
        assert self.ctx is not None
        res = self.ctx.state.record(
            "callback", target=f"harness.backends.xen:{target}",
            kwargs={"target": self.target.as_kwargs(), **kwargs},
        )
        with self._lock:
            self._resources.append(res)

    def prepare(self, image: Image, ctx: RunContext) -> None:
        self.ctx, self.image = ctx, image
        if self.facts is None:
            self.check(image, 1)
        d = self._connect()
        self.run_dir = posixpath.join(self.opts.workdir, "runs", ctx.run_id)
        self._record("remove_path", path=self.run_dir)
        d.check(["mkdir", "-p", self.run_dir], "making the run directory")
        if self.target.local:
            files = {k: str(v) for k, v in bundle_sources(image).items()}
        else:
            files = self._ensure_bundle(d, image)
        # Real paths: xenstore, losetup and the journal then all name a file the same way.
        real = d.check(["readlink", "-f", *files.values()], "resolving the image paths")
        self.files = dict(zip(files, real.splitlines(), strict=True))
        self._bridge_address(d, ctx)
        if isinstance(d, RemoteDom0):
            self.jump = Jump(self.target.host, self.target.port, self.target.user,
                             d.server_key_line(), identity_file=self.target.key)
            self.jump_clients = {self.jump: d.jump_client}
        (ctx.run_dir / "xen").mkdir(exist_ok=True)

    def _ensure_bundle(self, d: Dom0, image: Image) -> dict[str, str]:
        """The image, kernel and initramfs on dom0, copied once per build (by digest)."""
        assert self.ctx is not None
        bid = bundle_id(image)
        cache = posixpath.join(self.opts.workdir, "cache")
        final = posixpath.join(cache, bid)
        files = {name: posixpath.join(final, name) for name in BUNDLE_FILES}
        if d.run(["test", "-e", posixpath.join(final, "complete")]).rc == 0:
            return files
        partial = posixpath.join(cache, f".partial-{bid}-{self.ctx.run_id}")
        self._record("remove_path", path=partial)
        d.check(["mkdir", "-p", partial], "making the image cache")
        for name, src in bundle_sources(image).items():
            d.put(src, posixpath.join(partial, name))
        d.check(["sh", "-c", 'chmod 0444 "$1"/* && touch "$1/complete" && '
                 'mv -T "$1" "$2" 2>/dev/null || rm -rf "$1"', "sh", partial, final],
                "storing the image on dom0")
        if d.run(["test", "-e", posixpath.join(final, "complete")]).rc != 0:
            raise LabError(f"the image did not land in {final} on dom0 {d.label}")
        return files

    def _bridge_address(self, d: Dom0, ctx: RunContext) -> None:
        """Give dom0 an address in the lab subnet on the bridge, unless it has one."""
        subnet = ipaddress.IPv4Network(ctx.options["subnet"])
        have = [ipaddress.IPv4Interface(a) for a in (self.facts.bridge_addresses
                                                     if self.facts else [])]
        if any(a.ip in subnet for a in have):
            return
        routes = json.loads(d.run(["ip", "-j", "-4", "route", "show"]).out or "[]")
        for r in routes:
            dst = r.get("dst", "")
            if dst in ("", "default") or r.get("dev") == self.opts.bridge:
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.IPv4Network(dst, strict=False).overlaps(subnet):
                    raise UserError(f"the lab subnet {subnet} overlaps dom0's route {dst} on "
                                    f"{r.get('dev')}: choose another with --subnet")
        cidr = ctx.options["subnet_gateway"]
        self._record("remove_address", bridge=self.opts.bridge, cidr=cidr)
        d.check(["ip", "addr", "add", cidr, "dev", self.opts.bridge],
                f"adding {cidr} to {self.opts.bridge}")
        self._address = cidr

    # -- up ----------------------------------------------------------------------------------

    def config_for(self, spec: GuestSpec, disk: str) -> DomainConfig:
        assert self.ctx is not None
        vcpus = max(1, math.ceil(spec.cpus)) if spec.cpus else self.opts.vcpus
        memory = _mib(spec.memory) if spec.memory else self.opts.memory_mib
        return DomainConfig(
            name=domain_name(self.ctx.run_id, spec.name),
            guest=spec.name,
            run_id=self.ctx.run_id,
            kernel=self.files["vmlinuz"],
            ramdisk=self.files["initrd.img"],
            extra=guest_cmdline(spec, systemd=self.opts.init == "systemd",
                                extra=self.opts.cmdline),
            memory_mib=memory,
            vcpus=vcpus,
            disks=(
                disk_spec("xvda", "ro", self.files["base.img"]),
                disk_spec("xvdb", "rw", disk),
            ),
            vifs=(vif_spec(spec.mac, self.opts.bridge),),
        )

    def _create_one(self, spec: GuestSpec) -> _Domain:
        """Writable disk, config, ``xl create``: one domU, its phases recorded."""
        assert self.ctx is not None and self.dom0 is not None
        ctx, d = self.ctx, self.dom0
        t0 = now_ns()
        disk = posixpath.join(self.run_dir, f"{spec.name}.img")
        cfg_path = posixpath.join(self.run_dir, f"{spec.name}.cfg")
        self._record("remove_path", path=disk)
        size = self.opts.disk_mib << 20
        if self.target.local:
            make_guest_disk(spec, ctx.client_public_key, Path(disk), size)
        else:
            with tempfile.TemporaryDirectory(prefix="scalelab-xen-") as tmp:
                local = Path(tmp) / "disk.img"
                make_guest_disk(spec, ctx.client_public_key, local, size)
                d.put(local, disk)
        cfg = self.config_for(spec, disk)
        text = render_config(cfg)
        (ctx.run_dir / "xen" / f"{spec.name}.cfg").write_text(text)
        self._record("remove_path", path=cfg_path)
        d.write_text(cfg_path, text)
        dom = _Domain(spec.name, cfg.name, cfg_path, disk)
        t1 = now_ns()
        ctx.on_phase(spec.name, "created", t0, t1)
        self._record("destroy_domain", name=cfg.name)
        with self._lock:
            self.domains[spec.name] = dom
        files = [self.files["base.img"], disk]
        before = {dev for dev, _ in loops_on(d, files)}
        for attempt in (1, 2):
            res = d.run(["xl", "create", cfg_path], timeout=CREATE_TIMEOUT)
            if res.rc == 0:
                break
            # Take down what xl may have left, and the loop devices it attached for this
            # attempt (libxl does not always detach them when a hotplug script failed).
            with contextlib.suppress(LabError):
                destroy_on(d, cfg.name)
                stray = [[dev, f] for dev, f in loops_on(d, files) if dev not in before]
                if stray:
                    _release(d, stray)
            if attempt == 2 or not any(m in res.err for m in TRANSIENT):
                raise _CreateFailed(spec.name, cfg.name, res.message())
            dom.retries += 1
        ctx.on_phase(spec.name, "started", t1, now_ns())
        # libxl's block script sometimes leaves a loop device behind on destroy (it reads
        # the device back from xenstore, racing the removal): note this domU's own.
        dom.loops = domain_loops(d, cfg.name)
        if dom.loops:
            self._record("release_loops", loops=dom.loops)
        return dom

    def up(self, specs: Sequence[GuestSpec]) -> list[Guest]:
        assert self.ctx is not None and self.dom0 is not None
        failures: list[_CreateFailed] = []
        created: list[_Domain] = []
        workers = max(1, min(self.opts.parallel, len(specs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xl-create") as pool:
            futures = [(s, pool.submit(self._create_one, s)) for s in specs]
            for spec, fut in futures:
                try:
                    created.append(fut.result())
                except _CreateFailed as exc:
                    failures.append(exc)
                except Exception as exc:
                    failures.append(_CreateFailed(spec.name, domain_name(self.ctx.run_id,
                                                                         spec.name), str(exc)))
        if failures:
            first = failures[0]
            # Half-way: take down the domUs already created before saying what failed (and
            # whatever xl may have left of the failed ones).
            for dom in created:
                self._destroy(dom)
            for f in failures:
                with contextlib.suppress(LabError):
                    destroy_on(self.dom0, f.domain)
            more = f" ({len(failures) - 1} more failed)" if len(failures) > 1 else ""
            raise LabError(
                f"xl create of domU {first.domain} (guest {first.guest}) failed on dom0 "
                f"{self.dom0.label}: {first.message}{more}; the {len(created)} domU(s) "
                "already created were destroyed"
            )
        ids = self.domain_ids()
        guests = []
        for spec in specs:
            dom = self.domains[spec.name]
            dom.domid = ids.get(dom.name)
            if dom.domid is None:
                raise LabError(f"domU {dom.name} is not in `xl list` right after `xl create` "
                               f"(crashed at once?): see its console on dom0 {self.dom0.label}")
            guests.append(Guest(spec, spec.address, 22, jump=self.jump,
                                lab_host=self.target.host or "local",
                                info={"domain": dom.name, "domid": dom.domid, "disk": dom.disk,
                                      "create_retries": dom.retries}))
        self.guests += guests
        return guests

    def domain_ids(self) -> dict[str, int]:
        """Domain name → domid of every domain dom0 runs (from ``xl list -l``, JSON)."""
        assert self.dom0 is not None
        res = self.dom0.run(["xl", "list", "-l"], timeout=SHORT_TIMEOUT)
        if res.rc != 0:
            raise LabError(f"xl list -l on dom0 {self.dom0.label}: {res.message()}")
        return parse_xl_list_long(res.out)

    def states(self) -> dict[str, str]:
        """Domain name → xl's state letters (``r-----``, ``--p---``...)."""
        assert self.dom0 is not None
        return {name: row[4] for name, row in self._xl_list().items()}

    def _xl_list(self) -> dict[str, list[str]]:
        assert self.dom0 is not None
        out = self.dom0.check(["xl", "list"], "xl list")
        rows = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 6:
                rows[cols[0]] = cols
        return rows

    # -- down --------------------------------------------------------------------------------

    def _destroy(self, dom: _Domain) -> str | None:
        """Destroy one domU of this run; a problem met is returned, not raised."""
        assert self.dom0 is not None
        try:
            destroy_on(self.dom0, dom.name)
        except LabError as exc:
            return str(exc)
        _DONE.add((self.target.pool_key, "domain", dom.name))
        if dom.loops:
            _DONE.add((self.target.pool_key, "loops", tuple(map(tuple, dom.loops))))
        return None

    def down(self) -> list[str]:
        if self.dom0 is None or self.ctx is None:
            return []
        problems: list[str] = []
        try:
            present = set(self.domain_ids())
        except LabError as exc:
            problems.append(str(exc))
            present = {d.name for d in self.domains.values()}
        doomed = [d for d in self.domains.values() if d.name in present]
        for d in self.domains.values():
            if d.name not in present:
                _DONE.add((self.target.pool_key, "domain", d.name))
        if doomed:
            workers = max(1, min(self.opts.parallel, len(doomed)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xl-destroy") as p:
                problems += [m for m in p.map(self._destroy, doomed) if m]
        if not problems:
            # Every domU is gone: loops, files and the address can go (newest first).
            for res in reversed(list(self._resources_of(
                    "release_loops", "remove_path", "remove_address"))):
                met = teardown([res])
                problems += met
                if not met:
                    _DONE.add(_done_key(self.target, res))
        self.domains.clear()
        self.guests = []
        return problems

    def _resources_of(self, *funcs: str) -> Iterator[Resource]:
        wanted = {f"harness.backends.xen:{f}" for f in funcs}
        return (r for r in self._resources if r.get("target") in wanted)

    # -- reporting ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["dom0"] = self.target.label
        out["bridge"] = self.opts.bridge
        out["memory_mib"] = self.opts.memory_mib
        out["vcpus"] = self.opts.vcpus
        out["bridge_address_added"] = self._address
        if self.facts is not None:
            out["xen_version"] = self.facts.xen_version
            out["dom0_cpus"] = self.facts.nr_cpus
        return out

    def guest_memory(self, guest: Guest) -> int | None:
        row = self._xl_list().get(str(guest.info.get("domain")))
        return int(row[2]) << 20 if row else None

    def upper_bytes(self, guest: Guest) -> int | None:
        value = self.footprint([guest]).get(guest.name, {}).get("upper_bytes")
        return int(value[0]) if value else None

    def footprint(self, guests: Sequence[Guest]) -> dict[str, dict[str, tuple[float, str]]]:
        """Per guest: memory Xen gives the domU and the blocks its writable disk holds."""
        if self.dom0 is None:
            return {}
        rows = self._xl_list()
        disks = {str(g.info.get("disk")): g.name for g in guests if g.info.get("disk")}
        used: dict[str, int] = {}
        if disks:
            out = self.dom0.run(["du", "-k", *disks]).out
            for line in out.splitlines():
                kib, _, path = line.partition("\t")
                if path in disks and kib.isdigit():
                    used[disks[path]] = int(kib) * 1024
        result: dict[str, dict[str, tuple[float, str]]] = {}
        for g in guests:
            values: dict[str, tuple[float, str]] = {}
            row = rows.get(str(g.info.get("domain")))
            if row is not None:
                values["memory_bytes"] = (float(int(row[2]) << 20), "B")
            if g.name in used:
                values["upper_bytes"] = (float(used[g.name]), "B")
            result[g.name] = values
        return result

    # -- faults ------------------------------------------------------------------------------

    def _xl(self, verb: str, guest: Guest) -> None:
        assert self.dom0 is not None
        self.dom0.check(["xl", verb, str(guest.info["domain"])], f"xl {verb} {guest.name}",
                        timeout=CREATE_TIMEOUT)

    def kill(self, guest: Guest) -> None:
        assert self.dom0 is not None
        destroy_on(self.dom0, str(guest.info["domain"]))

    def pause(self, guest: Guest) -> None:
        self._xl("pause", guest)

    def resume(self, guest: Guest) -> None:
        self._xl("unpause", guest)

    def _vif(self, guest: Guest) -> str:
        return f"vif{guest.info['domid']}.0"

    def isolate(self, guests: Sequence[Guest], others: Sequence[Guest] | None = None) -> None:
        """Cut ``guests`` off the bridge by taking their vif down in dom0."""
        if others:
            raise FaultNotSupported("xen: partitions between groups of guests are not supported")
        assert self.dom0 is not None
        for g in guests:
            self.dom0.check(["ip", "link", "set", self._vif(g), "down"], f"isolating {g.name}")
            self._isolated.add(g.name)

    def heal(self) -> None:
        assert self.dom0 is not None
        by_name = {g.name: g for g in self.guests}
        for name in sorted(self._isolated):
            self.dom0.check(["ip", "link", "set", self._vif(by_name[name]), "up"],
                            f"healing {name}")
        self._isolated.clear()


class _CreateFailed(Exception):
    def __init__(self, guest: str, domain: str, message: str) -> None:
        super().__init__(f"{domain}: {message}")
        self.guest, self.domain, self.message = guest, domain, message


#: One round trip that tells what dom0 has: bridge, loop devices, tools.
_PROBE = r"""
br=$1
if [ -d "/sys/class/net/$br/bridge" ]; then echo bridge=yes
elif [ -e "/sys/class/net/$br" ]; then echo bridge=notbridge
else echo bridge=no; fi
if [ -e "/sys/class/net/$br" ] && ip link show "$br" | grep -q ',UP'; then echo bridge_up=up; fi
echo bridge_addrs=$(ip -o -4 addr show dev "$br" 2>/dev/null | sed -n 's/.* inet \([^ ]*\).*/\1/p')
if [ -d /sys/module/loop ] || [ -e /dev/loop-control ]; then echo loop_driver=yes; fi
[ -e /dev/loop-control ] && echo loop_control=yes
total=$(ls /dev | grep -c '^loop[0-9][0-9]*$')
used=$(losetup -n -O NAME 2>/dev/null | wc -l)
echo loop_free=$((total - used))
for t in mkdir rm losetup ip; do command -v $t >/dev/null 2>&1 && echo has_$t=yes; done
"""


def _xl_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def parse_xl_list_long(text: str) -> dict[str, int]:
    """``xl list -l`` JSON → domain name → domid."""
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise LabError(f"xl list -l did not print JSON: {exc}") from None
    out = {}
    for entry in data if isinstance(data, list) else []:
        name = entry.get("config", {}).get("c_info", {}).get("name")
        if name is not None and entry.get("domid") is not None:
            out[str(name)] = int(entry["domid"])
    return out


def _mib(size: str) -> int:
    from harness.backends.netns import _size_bytes

    return max(32, _size_bytes(size) >> 20)


# -- recording dom0's host key once, on purpose ---------------------------------------------


def record_host_key(dest: str, path: Path, timeout: float = 15.0,
                    confirm: Callable[[str], bool] | None = None) -> str:
    """Fetch dom0's host key and append it to ``path``; returns the line written.

    This is the one place a key is learnt from the network, and only when a person runs it:
    the fingerprint is printed so it can be compared with dom0's own
    (``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`` there).
    """
    user_host, _, port_s = dest.rpartition(":") if dest.count(":") == 1 else (dest, "", "22")
    host = user_host.rpartition("@")[2]
    port = int(port_s or 22)
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    line = known_hosts_line(host, port, key)
    if confirm is not None and not confirm(line):
        raise UserError("not recorded")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.backends.xen")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record-host-key", help="pin dom0's SSH host key (run once, on purpose)")
    r.add_argument("dest", help="[user@]host[:port]")
    r.add_argument("file", nargs="?", default=str(cache_dir() / "xen_known_hosts"))
    args = p.parse_args(argv)
    line = record_host_key(args.dest, Path(args.file))
    key_type, blob = line.split()[1:3]
    fp = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode()
    print(f"recorded {key_type} SHA256:{fp.rstrip('=')} for {line.split()[0]} in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
