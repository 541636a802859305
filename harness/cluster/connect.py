"""The Dask side of a cluster lab: one connection per ``--cluster`` per process (a
LocalCluster started here, or a client of a running scheduler), the lab hosts among its
workers, shard actors, and calls that notice when a lab host is gone instead of hanging."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.versions import VersionMismatchWarning

from harness.backends.base import Footprint, Jump
from harness.cluster.plan import CONNECT_TIMEOUT, ClusterSpec, LabWorker
from harness.errors import LabError, UserError
from harness.ssh import GroupResult
from harness.telemetry.sample import Sample

T = TypeVar("T")

#: How often a caller waiting on a shard checks that its worker is still there (seconds).
POLL = 1.0


class ShardLost(LabError):
    """The worker holding a shard is gone, and with it the shard's connections."""


class _Detach(WorkerPlugin):
    """Local workers leave the terminal's process group: a Ctrl-C reaches the client only,
    which takes every shard down in order (a worker that exits does so too, as a backstop)."""

    name = "scalelab-detach"

    def setup(self, worker: Any) -> None:
        with contextlib.suppress(OSError):
            os.setsid()


def bounded(func: Callable[[], T], timeout: float, what: str) -> T:
    """``func()`` in a helper thread; a LabError if it has not returned after ``timeout``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="scalelab-bounded", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise LabError(f"{what}: no answer within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


@dataclass
class Connection:
    """A Dask client (and the LocalCluster it started, if any), shared by the process's labs."""

    spec: ClusterSpec
    client: Client
    cluster: LocalCluster | None = None
    scratch: Path | None = None
    users: int = 0

    @property
    def address(self) -> str:
        return str(getattr(self.client.scheduler, "address", ""))

    def workers(self) -> dict[str, dict[str, Any]]:
        info: dict[str, dict[str, Any]] = self.client.scheduler_info(n_workers=-1)["workers"]
        return info

    def lab_workers(self) -> list[LabWorker]:
        """Workers with the ``lab`` resource, in address order, with their ``guests`` capacity."""
        out = []
        for address, w in sorted(self.workers().items()):
            res = w.get("resources") or {}
            if res.get("lab", 0) >= 1:
                cap = res.get("guests")
                out.append(LabWorker(address, int(cap) if cap else None))
        if not out:
            raise UserError(
                f"no worker of the Dask scheduler {self.spec.text} is a lab host: start them "
                "as root with `dask worker SCHEDULER --resources lab=1 --nworkers 1`"
            )
        return out

    def alive(self, address: str) -> bool:
        try:
            return address in self.workers()
        except Exception:
            return False

    def run(self, func: Callable[..., Any], *args: Any, workers: list[str],
            timeout: float = 60.0) -> dict[str, Any]:
        """``func(*args)`` on each of ``workers``: address → result, or the exception raised."""
        def call() -> dict[str, Any]:
            out: dict[str, Any] = self.client.run(func, *args, workers=workers,
                                                  on_error="return")
            return out

        return bounded(call, timeout, f"workers {', '.join(workers)}")

    def spawn(self, cls: type, arg: Any, worker: str, key: str) -> Any:
        """Submit an actor of ``cls(arg)`` pinned to ``worker``; returns its future."""
        return self.client.submit(cls, arg, actor=True, workers=[worker], resources={"lab": 1},
                                  allow_other_workers=False, pure=False, key=key)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)  # type: ignore[no-untyped-call]
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=30)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


_LOCK = threading.Lock()
_OPEN: dict[str, Connection] = {}


def acquire(spec: ClusterSpec) -> Connection:
    """The process's connection for ``spec`` (opened now if needed); pair with :func:`release`."""
    with _LOCK:
        conn = _OPEN.get(spec.text)
        if conn is None:
            conn = _OPEN[spec.text] = open_connection(spec)
        conn.users += 1
        return conn


def release(conn: Connection) -> None:
    """Drop one user; the last one closes the connection (and stops a LocalCluster)."""
    with _LOCK:
        conn.users -= 1
        if conn.users > 0:
            return
        if _OPEN.get(conn.spec.text) is conn:
            del _OPEN[conn.spec.text]
    conn.close()


@atexit.register
def _close_all() -> None:
    with _LOCK:
        conns = list(_OPEN.values())
        _OPEN.clear()
    for conn in conns:
        conn.close()


def open_connection(spec: ClusterSpec) -> Connection:
    """Start K local workers, or connect to the scheduler (a UserError after 10 s)."""
    if spec.local:
        return _open_local(spec)
    try:
        with warnings.catch_warnings():
            # Version differences (e.g. Python patch levels) between the client and the lab
            # hosts are told as a multi-line table; the facts check says what matters.
            warnings.simplefilter("ignore", VersionMismatchWarning)
            client = Client(  # type: ignore[no-untyped-call]
                spec.address, timeout=CONNECT_TIMEOUT, set_as_default=False
            )
    except (OSError, TimeoutError) as exc:
        raise UserError(
            f"the Dask scheduler at {spec.address} did not answer within "
            f"{CONNECT_TIMEOUT:.0f} s ({type(exc).__name__}); is `dask scheduler` running there?"
        ) from None
    return Connection(spec, client)


def _open_local(spec: ClusterSpec) -> Connection:
    scratch = Path(tempfile.mkdtemp(prefix="scalelab-dask-"))
    cluster: LocalCluster | None = None
    try:
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=spec.local_workers, threads_per_worker=2, processes=True,
            resources={"lab": 1}, host="127.0.0.1", dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # no fixed port
            silence_logs=logging.ERROR, local_directory=str(scratch), memory_limit=0,
        )
        client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
        client.register_plugin(_Detach())
        client.wait_for_workers(spec.local_workers, timeout=120)
    except BaseException:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Connection(spec, client, cluster, scratch)


@dataclass(eq=False)
class ShardHandle:
    """The client's handle on one shard: where it is, its guests, and guarded calls."""

    index: int
    run_id: str
    lab_host: str
    worker: LabWorker
    n_guests: int
    subnet: str
    local: bool  # on the client's own machine
    facts: dict[str, Any] = field(repr=False)
    conn: Connection = field(repr=False)
    future: Any = field(default=None, repr=False)
    actor: Any = field(default=None, repr=False)
    names: list[str] = field(default_factory=list)
    lost: bool = False

    def jump(self) -> Jump:
        """This lab host as an SSH jump host for a person reaching its guests."""
        key = self.facts.get("ssh_host_key")
        line = f"{self.worker.host} {key}" if key else ""
        return Jump(self.worker.host, 22, "root", line)

    # -- the shard's methods, one typed call each (the actor is duck-typed by Dask) --------

    def now(self) -> int:
        return int(self._call("now"))

    def pid(self) -> int:
        return int(self._call("pid"))

    def progress(self) -> tuple[int, int, int]:
        started, ready, failed = self._call("progress")
        return int(started), int(ready), int(failed)

    def plan(self, n: int, subnet: str) -> list[dict[str, str]]:
        return cast(list[dict[str, str]], self._call("plan", n, subnet))

    def start_boot(self) -> Any:
        """Boot starts on every shard at once; :meth:`booted` waits for one."""
        return self._submit("boot")

    def booted(self, fut: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self.wait(fut))

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        timings, metrics = self._call("drain")
        return list(timings), list(metrics)

    def tunnel(self, remote_macs: dict[str, str]) -> None:
        self._call("tunnel", remote_macs)

    def probe(self, timeout: float) -> set[str]:
        return {str(h) for h in self._call("probe", timeout)}

    def join(self) -> GroupResult:
        return self._group(self._call("join"))

    def counters(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._call("counters").items()}

    def cut(self, side_a: list[str], side_b: list[str]) -> None:
        self._call("cut", side_a, side_b)

    def footprint(self, names: list[str]) -> Footprint:
        return cast(Footprint, self._call("footprint", names))

    def sample(self, names: list[str], slow: bool) -> tuple[int, list[Sample]]:
        t_ns, samples = self._call("sample", names, slow)
        return int(t_ns), list(samples)

    def fault(self, action: str, names: list[str], arg: Any = None) -> None:
        self._call("fault", action, names, arg)

    def keep(self) -> None:
        self._call("keep")

    def stop(self) -> list[str]:
        return [str(p) for p in self._call("stop")]

    # Fan-out calls start on every shard concerned at once, then are waited for.

    def start_run(self, command: str, timeout: float | None, names: list[str]) -> Any:
        return self._submit("run", command, timeout, names)

    def start_map(self, func: bytes, names: list[str]) -> Any:
        return self._submit("map", func, names)

    def start_put(self, upload: Any, remote: str, mode: int | None, names: list[str]) -> Any:
        return self._submit("put", upload, remote, mode, names)

    def group(self, fut: Any) -> GroupResult:
        """The GroupResult a fan-out call started with ``start_*`` gave."""
        return self._group(self.wait(fut))

    # -- transport ---------------------------------------------------------------------------

    def _group(self, got: Any) -> GroupResult:
        if not isinstance(got, GroupResult):
            raise LabError(f"lab host {self.lab_host} answered {type(got).__name__}, "
                           "not a group result")
        return got

    def _submit(self, method: str, *args: Any) -> Any:
        """Start ``method(*args)`` on the shard; returns its ActorFuture."""
        try:
            return getattr(self.actor, method)(*args)
        except RuntimeError as exc:  # "Worker holding Actor was lost"
            raise ShardLost(f"lab host {self.lab_host} is lost: {exc}") from None

    def wait(self, fut: Any) -> Any:
        """The result of an ActorFuture, or ShardLost as soon as the worker is gone."""
        while True:
            try:
                return fut.result(timeout=POLL)
            except TimeoutError:
                if not self.conn.alive(self.worker.address):
                    raise ShardLost(f"lab host {self.lab_host} ({self.worker.address}) "
                                    "is gone") from None
            except OSError as exc:
                # Shards send their own OSErrors back as ShardError: this one is the link
                # to the worker holding the shard (and its SSH connections) breaking.
                raise ShardLost(f"lab host {self.lab_host} ({self.worker.address}) "
                                f"is gone: {exc}") from None
            except RuntimeError as exc:
                if "Actor was lost" in str(exc):
                    raise ShardLost(f"lab host {self.lab_host} is lost: {exc}") from None
                raise

    def _call(self, method: str, *args: Any) -> Any:
        return self.wait(self._submit(method, *args))

    def start(self) -> None:
        """Wait for the actor made by :meth:`Connection.spawn` (``future`` must be set)."""
        while True:
            try:
                actor = self.future.result(timeout=POLL)
                # An Actor binds to the process's default client; ours is not the default
                # (a lab must not change what `dask` means for the scenarios), so bind it
                # here as Actor._try_bind_worker_client would.
                actor._client = self.conn.client
                actor._future = self.future
                self.actor = actor
                return
            except TimeoutError:
                if not self.conn.alive(self.worker.address):
                    raise ShardLost(f"lab host {self.lab_host} went away while its shard "
                                    "was being made") from None
