"""Workloads: the agent protocol and the built-in agents.

An agent is a script (or a directory with an entry script) uploaded to every guest over
SFTP and run there.  Each stdout line that parses as a JSON object with ``metric`` and
``value`` becomes a metrics row (``unit``, ``agg`` — how the report aggregates it over guests:
``sum``, ``mean``, ``max``, ``p50``… — and ``t`` — epoch seconds — are optional); every
other line is kept in the guest's agent log under ``<run>/guests/<guest>.<agent>.log``.
Each run of an agent on a guest is also one timing row (op = the agent's name).
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import paramiko

from harness.plumbing.result import CommandResult
from harness.ssh import EXIT, FanOut, GroupResult, run_command
from harness.store import Recorder
from harness.workloads.collect import Gathered, fetch_files, json_results
from harness.workloads.servers import Server, start_command, stop_command
from harness.workloads.waits import WAIT_SCRIPT

REMOTE_DIR = "/opt/scalelab/agents"
#: Built-in agents shipped with the package (run with the guest's python3).
BUILTIN = ("cpu", "cowwrite", "transfer", "reqload")
#: A metrics line longer than this is treated as log output, not parsed.
MAX_METRIC_LINE = 4096


def builtin_path(name: str) -> Path:
    if name not in BUILTIN:
        raise ValueError(f"no built-in agent {name!r}; there are {', '.join(BUILTIN)}")
    return Path(str(resources.files("harness.workloads") / "agents" / f"{name}.py"))


@dataclass
class ParsedOutput:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def parse_agent_output(text: str) -> ParsedOutput:
    """Split an agent's stdout into metric records and log lines. Never raises."""
    out = ParsedOutput()
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and len(s) <= MAX_METRIC_LINE:
            try:
                obj = json.loads(s)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and "metric" in obj and "value" in obj:
                try:
                    value = float(obj["value"])
                except (TypeError, ValueError):
                    value = math.nan
                if math.isfinite(value):
                    rec: dict[str, Any] = {
                        "metric": str(obj["metric"])[:200],
                        "value": value,
                        "unit": str(obj.get("unit", ""))[:32],
                        "agg": str(obj.get("agg", ""))[:16],
                    }
                    t = obj.get("t")
                    if isinstance(t, int | float) and math.isfinite(t):
                        rec["t_ns"] = int(t * 1e9)
                    out.metrics.append(rec)
                    continue
        out.log.append(line)
    return out


def record_results(
    group: GroupResult, recorder: Recorder, op: str, *, log_dir: Path | None = None,
    phase: str = "workload", log_name: str | None = None,
) -> GroupResult:
    """One timing row per guest (failures with their class), agent metrics and logs.

    Log lines go to ``<log_dir>/<guest>.<log_name or op>.log``, under a line naming the
    scenario they came from (a sweep appends one section per N)."""
    for name, res in group.results.items():
        if not isinstance(res, CommandResult):
            continue
        recorder.timing(
            op, res.start_ns, res.end_ns, guest=name, phase=phase, ok=res.ok,
            error_class=None if res.ok else EXIT,
            error=None if res.ok else group.reason(name),
            exit_status=res.exit_status,
        )
        parsed = parse_agent_output(res.stdout)
        for m in parsed.metrics:
            recorder.metric(m["metric"], m["value"], unit=m["unit"], guest=name,
                            t_ns=m.get("t_ns", res.end_ns), agg=m["agg"])
        if log_dir is not None and (parsed.log or res.stderr):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in log_name or op)
            with (log_dir / f"{name}.{safe}.log").open("a", errors="replace") as f:
                f.write(f"--- {recorder.context.scenario or op} ---\n")
                f.write("\n".join(parsed.log) + "\n")
                if res.stderr:
                    f.write("[stderr]\n" + res.stderr)
    now = time.time_ns()
    for name, err in group.errors.items():
        recorder.timing(op, now, now, guest=name, phase=phase, ok=False,
                        error_class=err.error_class, error=err.message[:500])
    return group


class Agents:
    """Deploy and run agents on a fleet, recording everything."""

    def __init__(self, fleet: FanOut, recorder: Recorder, log_dir: Path | None = None) -> None:
        self.fleet = fleet
        self.recorder = recorder
        self.log_dir = log_dir
        #: Servers started and not yet stopped, newest last.
        self.servers: list[Server] = []
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Agents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def targets(self, names: Iterable[str] | None = None,
                role: str | None = None) -> list[str]:
        """The guests a call is for: ``names``, or role ``role``'s, or every guest."""
        if role is not None:
            if names is not None:
                raise ValueError("give names or role, not both")
            return list(self.fleet.roles.members(role))
        return list(self.fleet.names if names is None else names)

    def deploy(self, local: Path, names: Iterable[str] | None = None, *,
               role: str | None = None) -> str:
        """Upload a script or directory to every guest; returns its remote path."""
        names = self.targets(names, role)
        remote = f"{REMOTE_DIR}/{local.name}"
        with self.recorder.measure("deploy", phase="setup") as m:
            self.fleet.run(f"mkdir -p {REMOTE_DIR}", names=names)
            group = self.fleet.put(local, remote, names=names)
            if group.errors:
                m.fail("deploy", "; ".join(str(e) for e in list(group.errors.values())[:3]))
        return remote

    def deploy_builtin(self, name: str, names: Iterable[str] | None = None, *,
                       role: str | None = None) -> str:
        return self.deploy(builtin_path(name), names, role=role)

    def run(
        self,
        op: str,
        argv: Sequence[str],
        *,
        names: Iterable[str] | None = None,
        role: str | None = None,
        timeout: float | None = 300.0,
    ) -> GroupResult:
        """Run ``argv`` (quoted for the guest's shell) on the guests (``names``, or role
        ``role``'s, or all) and record the results."""
        group = self.fleet.run(shlex.join(argv), names=self.targets(names, role),
                               timeout=timeout)
        return record_results(group, self.recorder, op, log_dir=self.log_dir)

    def python(
        self, name: str, *args: str | int, names: Iterable[str] | None = None,
        role: str | None = None, timeout: float | None = 300.0, op: str | None = None,
    ) -> GroupResult:
        """Run built-in agent ``name`` with the guest's python3."""
        remote = f"{REMOTE_DIR}/{name}.py"
        return self.run(op or name, ["python3", remote, *map(str, args)], names=names,
                        role=role, timeout=timeout)

    def gather(
        self, op: str, argv: Sequence[str], *, names: Iterable[str] | None = None,
        role: str | None = None, timeout: float | None = 300.0,
    ) -> Gathered:
        """Run ``argv`` on the guests and parse what each prints as one JSON value (or its
        last line as one): guest → value. A guest whose output is not JSON fails its row
        (class ``output``, with the reason) like one whose command failed."""
        group = self.fleet.run(shlex.join(argv), names=self.targets(names, role),
                               timeout=timeout)
        gathered = json_results(group)
        record_results(group, self.recorder, op, log_dir=self.log_dir)
        return gathered

    def fetch(self, remote: str, names: Iterable[str] | None = None, *,
              role: str | None = None) -> dict[str, Path]:
        """Copy file ``remote`` back from every guest into the run's ``guests/<guest>/
        <scenario>/`` folder; guest → local path. One ``fetch`` row per guest."""
        if self.log_dir is None:
            raise ValueError("these agents have no run directory to copy files into")
        scenario = self.recorder.context.scenario or "files"
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in scenario)
        return fetch_files(self.fleet, self.recorder, remote, self.log_dir,
                           names=self.targets(names, role), subdir=safe)

    def run_each(
        self,
        op: str,
        argv_for: Callable[[str], Sequence[str]],
        *,
        names: Iterable[str] | None = None,
        role: str | None = None,
        timeout: float | None = 300.0,
    ) -> GroupResult:
        """Like :meth:`run`, with a command line of its own for each guest."""

        def one(name: str, client: paramiko.SSHClient) -> CommandResult:
            return run_command(client, shlex.join(argv_for(name)), timeout=timeout,
                               guest=name)

        return record_results(self.fleet.map(one, self.targets(names, role)), self.recorder,
                              op, log_dir=self.log_dir)

    def wait_for_port(
        self, port: int, names: Iterable[str] | None = None, timeout: float = 10.0, *,
        host: str = "127.0.0.1", op: str | None = None, role: str | None = None,
    ) -> GroupResult:
        """Wait until a TCP connection to ``host:port`` succeeds from each guest (its own
        loopback by default), for at most ``timeout`` seconds; one row per guest
        (op ``wait_port_<port>`` unless given), a failure with the last reason it saw."""
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self._wait("port", target, self.targets(names, role), timeout,
                          op or f"wait_port_{port}")

    def wait_for_url(
        self, url: str, names: Iterable[str] | None = None, timeout: float = 10.0, *,
        op: str = "wait_url", role: str | None = None,
    ) -> GroupResult:
        """Wait until ``url`` answers each guest with a success (an HTTP status below 400;
        a 503 while a service starts is waited through), for at most ``timeout`` seconds;
        one row per guest, a failure with the last reason it saw."""
        return self._wait("url", url, self.targets(names, role), timeout, op)

    def _wait(self, kind: str, target: str, names: Iterable[str] | None, timeout: float,
              op: str) -> GroupResult:
        # The SSH command gets a margin over the guest's own deadline, so a slow guest
        # fails with its own reason rather than the fan-out's timeout.
        return self.run(op, ["python3", "-c", WAIT_SCRIPT, kind, target, f"{timeout:g}"],
                        names=names, timeout=timeout + 30)

    def serve(
        self, op: str, argv: Sequence[str], *, names: Iterable[str] | None = None,
        role: str | None = None, ready_line: str = "listening", timeout: float = 10.0,
    ) -> GroupResult:
        """Start a server in the background on the guests and wait until each prints
        ``ready_line``; one ``<op>_start`` row per guest.

        Its output goes to ``/var/log/scalelab-<op>.log`` in the guest and, when it is
        stopped, to the guest's log under the report. A server that exits or stays silent
        fails its row with the guest-side reason (say ``Address already in use``). It runs
        until :meth:`stop_servers` or :meth:`close` (the ``agents`` fixture calls it when
        the test ends, whatever its outcome).
        """
        server = Server(op, tuple(self.targets(names, role)))
        self.servers.append(server)  # even a failed start may have left a process
        group = self.fleet.run(start_command(server, argv, ready_line, timeout),
                               names=server.names, timeout=timeout + 10)
        return record_results(group, self.recorder, f"{op}_start", phase="setup")

    def stop_servers(self, grace: float = 5.0) -> GroupResult:
        """Stop every server started here (SIGTERM to its session, SIGKILL after ``grace``
        seconds), newest first; one ``<op>_stop`` row per guest, its log kept. Never raises
        for a guest that is gone."""
        out = GroupResult()
        while self.servers:
            server = self.servers.pop()
            names = [n for n in server.names if n in self.fleet.names]
            group = self.fleet.run(stop_command(server, grace), names=names,
                                   timeout=grace + 15)
            record_results(group, self.recorder, f"{server.op}_stop", phase="teardown",
                           log_dir=self.log_dir, log_name=server.op)
            out.results.update(group.results)
            out.errors.update(group.errors)
        return out

    def close(self) -> None:
        """Stop what this test started in the background."""
        self.stop_servers()


def roundtrip(fleet: FanOut, recorder: Recorder, rounds: int = 10,
              command: str = "true") -> list[GroupResult]:
    """Fan ``command`` out ``rounds`` times; one timing row per guest per round."""
    out = []
    for _ in range(rounds):
        out.append(record_results(fleet.run(command, timeout=60), recorder, "roundtrip"))
    return out
