"""The per-run state journal: every resource a run creates is written down before it exists.

``/run/scalelab/<run_id>/state.jsonl`` starts with a header line (run id, owner pid and its
start time, backend, run directory) followed by one line per resource.  Teardown removes the
resources in reverse order; ``scalelab clean`` does the same for runs whose owner is gone.
Because the line is written *before* the resource is made, a crash at any point leaves a
journal that names everything that may exist; removal tolerates what never came to be.
Nothing that is not in a journal is ever touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.plumbing import host, nft

STATE_ROOT = Path(os.environ.get("SCALELAB_STATE_ROOT", "/run/scalelab"))
JOURNAL = "state.jsonl"


def proc_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it does not exist.

    A pid together with its start time names one process even after the pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def process_alive(pid: int, start: int | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


@dataclass
class Resource:
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass
class RunState:
    """An open journal of one run."""

    run_id: str
    path: Path
    header: dict[str, Any]
    resources: list[Resource]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @classmethod
    def create(cls, run_id: str, **header: Any) -> RunState:
        d = STATE_ROOT / run_id
        d.mkdir(parents=True, exist_ok=False)
        path = d / JOURNAL
        head = {
            "run_id": run_id,
            "pid": os.getpid(),
            "pid_start": proc_start_time(os.getpid()),
            "created": time.time(),
            **header,
        }
        with path.open("x") as f:
            f.write(json.dumps({"header": head}) + "\n")
        return cls(run_id, path, head, [])

    @classmethod
    def load(cls, path: Path) -> RunState:
        """Read a journal; a torn or corrupt line is skipped, a missing header is an error."""
        header: dict[str, Any] | None = None
        resources = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(entry, dict):
                continue
            if "header" in entry and isinstance(entry["header"], dict):
                header = entry["header"]
            elif "kind" in entry:
                kind = str(entry.pop("kind"))
                resources.append(Resource(kind, entry))
        if header is None:
            header = {"run_id": path.parent.name, "pid": None}
        return cls(str(header.get("run_id", path.parent.name)), path, header, resources)

    def update_header(self, **values: Any) -> None:
        self.header.update(values)
        self._append({"header": self.header})

    def record(self, kind: str, **attrs: Any) -> Resource:
        """Write down a resource that is about to be created."""
        res = Resource(kind, attrs)
        with self._lock:
            self.resources.append(res)
        self._append({"kind": kind, **attrs})
        return res

    def _append(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    @property
    def owner_alive(self) -> bool:
        pid = self.header.get("pid")
        return isinstance(pid, int) and process_alive(pid, self.header.get("pid_start"))

    @property
    def kept(self) -> bool:
        """The lab was left up on purpose (``scalelab up``, ``--keep-guests``)."""
        return bool(self.header.get("kept"))

    def remove_all(self) -> list[str]:
        """Remove every recorded resource, newest first. Returns the problems met (if any)."""
        problems = teardown(reversed(self.resources))
        if not problems:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems


def list_states() -> list[RunState]:
    if not STATE_ROOT.is_dir():
        return []
    states = []
    for d in sorted(STATE_ROOT.iterdir()):
        journal = d / JOURNAL
        if journal.is_file():
            states.append(RunState.load(journal))
    return states


# -- removal of each kind of resource ---------------------------------------------------


def kill_process(pid: int, start: int | None, timeout: float = 5.0) -> None:
    if not process_alive(pid, start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our own child
    deadline = time.monotonic() + timeout
    while process_alive(pid, start) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)


def thaw_cgroup(path: Path) -> None:
    """Thaw a frozen cgroup (v1 freezer or v2 ``cgroup.freeze``): a frozen task cannot die."""
    for name, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        with contextlib.suppress(OSError):
            if (path / name).exists():
                (path / name).write_text(thawed)


def empty_cgroup(path: Path, timeout: float = 5.0) -> bool:
    """Kill everything in a cgroup directory and remove it; True when it is gone."""
    if not path.is_dir():
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        if pids:
            thaw_cgroup(path)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return True
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


#: Removal order: processes first (so namespaces and mounts lose their users), then what
#: they used.  Within one stage resources go newest first.
_STAGES = {
    "callback": 0,
    "process": 1,
    "cgroup": 2,
    "nft": 3,
    "link": 4,
    "netns": 4,
    "mount": 5,
    "loop": 6,
    "dir": 7,
}


def teardown(resources: Iterable[Resource]) -> list[str]:
    """Remove resources stage by stage; returns the problems met (an empty list when clean)."""
    problems: list[str] = []
    ordered = list(resources)
    by_stage: dict[int, list[Resource]] = {}
    for res in ordered:
        by_stage.setdefault(_STAGES.get(res.kind, 99), []).append(res)
    for stage in sorted(by_stage):
        group = by_stage[stage]
        if stage == _STAGES["process"]:
            # Signal them all at once, then wait: 1024 guests must not wait one by one.
            for res in group:
                signal_process(int(res.get("pid")), res.get("start"))
        if stage == _STAGES["link"]:
            problems += _remove_links(group)
            continue
        for res in group:
            try:
                _remove_one(res)
            except Exception as exc:  # teardown never stops half-way
                problems.append(f"{res.kind} {res.attrs}: {exc}")
    return problems


def _remove_links(group: list[Resource]) -> list[str]:
    """Delete named namespaces, then links, with one ``ip -batch`` each.

    Deleting a namespace takes the veths inside it (and their host-side peers) with it, in
    one batch in the kernel; deleting each veth by hand costs an RCU grace period apiece
    (about 2 s for 64 guests).  So namespaces go first, and only links still there after the
    kernel's cleanup are deleted one by one.
    """
    def exists(r: Resource) -> bool:
        name = r.get("name")
        return Path(f"/sys/class/net/{name}" if r.kind == "link" else f"/run/netns/{name}").exists()

    def batch(lines: list[str]) -> None:
        if lines:
            # -force goes on past lines that fail (a link already gone with its namespace).
            host.ip_batch(lines, force=True)

    namespaces = [r for r in group if r.kind == "netns" and exists(r)]
    links = [r for r in group if r.kind == "link"]
    # Anything still living in one of our namespaces is ours (a guest whose pid never made
    # it into the journal because its owner was killed mid-spawn): kill it first.
    kill_in_namespaces([Path(f"/run/netns/{r.get('name')}") for r in namespaces])
    batch([f"netns delete {r.get('name')}" for r in namespaces])
    # A link recorded with the namespace its peer lives in goes away with that namespace.
    doomed = {r.get("name") for r in namespaces}
    going = [r for r in links if r.get("netns") in doomed]
    deadline = time.monotonic() + 3.0
    while going and time.monotonic() < deadline and any(exists(r) for r in going):
        time.sleep(0.02)
    batch([f"link del {r.get('name')}" for r in links if exists(r)])
    return [f"{r.kind} {r.get('name')} still exists" for r in group if exists(r)]


def kill_in_namespaces(files: list[Path], timeout: float = 5.0) -> None:
    """SIGKILL every process whose network namespace is one of ``files``."""
    inodes = set()
    for f in files:
        with contextlib.suppress(OSError):
            inodes.add(f.stat().st_ino)
    if not inodes:
        return
    deadline = time.monotonic() + timeout
    while True:
        victims = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.stat(proc / "ns/net").st_ino in inodes:
                    victims.append(int(proc.name))
            except OSError:
                continue
        if not victims or time.monotonic() > deadline:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


def signal_process(pid: int, start: int | None) -> None:
    if process_alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_one(res: Resource) -> None:
    kind = res.kind
    if kind == "process":
        kill_process(int(res.get("pid")), res.get("start"))
    elif kind == "cgroup":
        # On v1 the guest's freezer is one of its directories: thawed before any other is
        # emptied, or the SIGKILLed tasks of a paused guest never leave its memory cgroup.
        for p in res.get("paths", []):
            thaw_cgroup(Path(p))
        for p in res.get("paths", []):
            if not empty_cgroup(Path(p)):
                raise RuntimeError(f"cgroup {p} still has tasks")
    elif kind == "mount":
        path = str(res.get("path"))
        if host.mounted(path):
            out = host.run(["umount", path])
            if not out.ok and host.mounted(path):
                out = host.run(["umount", "-l", path])
                if not out.ok:
                    raise RuntimeError(out.message())
    elif kind == "loop":
        dev, backing = str(res.get("device", "")), str(res.get("backing", ""))
        if dev and _loop_backing(dev) == backing:
            out = host.run(["losetup", "-d", dev])
            if not out.ok and _loop_backing(dev) == backing:
                raise RuntimeError(out.message())
    elif kind == "dir":
        directory = Path(str(res.get("path")))
        if directory.exists() and not host.mounted(str(directory)):
            shutil.rmtree(directory, ignore_errors=True)
    elif kind == "nft":
        table, family = str(res.get("table")), str(res.get("family", "inet"))
        nft.delete_table(family, table)
    elif kind == "callback":
        # Backends with remote resources (xen) register an importable cleanup function.
        module, _, func = str(res.get("target")).partition(":")
        import importlib

        getattr(importlib.import_module(module), func)(**res.get("kwargs", {}))
    else:
        raise RuntimeError(f"unknown resource kind {kind!r}")


def _loop_backing(dev: str) -> str | None:
    name = Path(dev).name
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None
