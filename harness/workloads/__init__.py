"""Workloads: the agent protocol and the built-in agents.

An agent is a script (or a directory with an entry script) uploaded to every guest over
SFTP and run there.  Each stdout line that parses as a JSON object with ``metric`` and
``value`` becomes a metrics row (``unit`` and ``t`` — epoch seconds — are optional); every
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

from harness.ssh import EXIT, CommandResult, Fleet, GroupResult, run_on
from harness.store import Recorder

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
                    }
                    t = obj.get("t")
                    if isinstance(t, int | float) and math.isfinite(t):
                        rec["t_ns"] = int(t * 1e9)
                    out.metrics.append(rec)
                    continue
        out.log.append(line)
    return out


def record_results(
    group: GroupResult, recorder: Recorder, op: str, *, log_dir: Path | None = None
) -> GroupResult:
    """One timing row per guest (failures with their class), agent metrics and logs."""
    for name, res in group.results.items():
        if not isinstance(res, CommandResult):
            continue
        recorder.timing(
            op, res.start_ns, res.end_ns, guest=name, ok=res.ok,
            error_class=None if res.ok else EXIT,
            error=None if res.ok else (res.stderr.strip().splitlines() or [""])[-1][:500],
            exit_status=res.exit_status,
        )
        parsed = parse_agent_output(res.stdout)
        for m in parsed.metrics:
            recorder.metric(m["metric"], m["value"], unit=m["unit"], guest=name,
                            t_ns=m.get("t_ns", res.end_ns))
        if log_dir is not None and (parsed.log or res.stderr):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in op)
            with (log_dir / f"{name}.{safe}.log").open("a", errors="replace") as f:
                f.write("\n".join(parsed.log) + "\n")
                if res.stderr:
                    f.write("[stderr]\n" + res.stderr)
    now = time.time_ns()
    for name, err in group.errors.items():
        recorder.timing(op, now, now, guest=name, ok=False, error_class=err.error_class,
                        error=err.message[:500])
    return group


class Agents:
    """Deploy and run agents on a fleet, recording everything."""

    def __init__(self, fleet: Fleet, recorder: Recorder, log_dir: Path | None = None) -> None:
        self.fleet = fleet
        self.recorder = recorder
        self.log_dir = log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def deploy(self, local: Path, names: Iterable[str] | None = None) -> str:
        """Upload a script or directory to every guest; returns its remote path."""
        remote = f"{REMOTE_DIR}/{local.name}"
        with self.recorder.measure("deploy", phase="setup") as m:
            self.fleet.run(f"mkdir -p {REMOTE_DIR}", names=names)
            group = self.fleet.put(local, remote, names=names)
            if group.errors:
                m.fail("deploy", "; ".join(str(e) for e in list(group.errors.values())[:3]))
        return remote

    def deploy_builtin(self, name: str, names: Iterable[str] | None = None) -> str:
        return self.deploy(builtin_path(name), names)

    def run(
        self,
        op: str,
        argv: Sequence[str],
        *,
        names: Iterable[str] | None = None,
        timeout: float | None = 300.0,
    ) -> GroupResult:
        """Run ``argv`` (quoted for the guest's shell) on the guests and record the results."""
        group = self.fleet.run(shlex.join(argv), names=names, timeout=timeout)
        return record_results(group, self.recorder, op, log_dir=self.log_dir)

    def python(
        self, name: str, *args: str | int, names: Iterable[str] | None = None,
        timeout: float | None = 300.0, op: str | None = None,
    ) -> GroupResult:
        """Run built-in agent ``name`` with the guest's python3."""
        remote = f"{REMOTE_DIR}/{name}.py"
        return self.run(op or name, ["python3", remote, *map(str, args)], names=names,
                        timeout=timeout)

    def run_each(
        self,
        op: str,
        argv_for: Callable[[str], Sequence[str]],
        *,
        names: Iterable[str] | None = None,
        timeout: float | None = 300.0,
    ) -> GroupResult:
        """Like :meth:`run`, with a command line of its own for each guest."""

        def one(name: str, client: paramiko.SSHClient) -> CommandResult:
            return run_on(client, shlex.join(argv_for(name)), timeout=timeout, guest=name)

        return record_results(self.fleet.map(one, names), self.recorder, op,
                              log_dir=self.log_dir)

    def serve(
        self, op: str, argv: Sequence[str], *, names: Iterable[str] | None = None,
        ready_line: str = "listening", timeout: float = 10.0,
    ) -> GroupResult:
        """Start a server in the background on the guests and wait until each prints
        ``ready_line`` (its output goes to ``/var/log/scalelab-<op>.log`` in the guest)."""
        targets = list(self.fleet.names if names is None else names)
        log = shlex.quote(f"/var/log/scalelab-{op}.log")
        tries = max(1, int(timeout / 0.05))
        cmd = (
            f"nohup {shlex.join(argv)} > {log} 2>&1 < /dev/null & "
            f"for i in $(seq {tries}); do grep -q {shlex.quote(ready_line)} {log} && exit 0; "
            f"sleep 0.05; done; cat {log} >&2; exit 1"
        )
        with self.recorder.measure(f"{op}_start", phase="setup") as m:
            group = self.fleet.run(cmd, names=targets, timeout=timeout + 10)
            if not group.ok:
                m.fail("exit", f"server did not start on {sorted(group.failed)[:5]}")
        return group


def roundtrip(fleet: Fleet, recorder: Recorder, rounds: int = 10,
              command: str = "true") -> list[GroupResult]:
    """Fan ``command`` out ``rounds`` times; one timing row per guest per round."""
    out = []
    for _ in range(rounds):
        out.append(record_results(fleet.run(command, timeout=60), recorder, "roundtrip"))
    return out
