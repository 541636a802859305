"""The timing store: every measured thing is a row, appended to disk as it is measured.

Two tables, each written as an append-only JSON-lines stream while the run goes on
(``timings.jsonl``, ``metrics.jsonl``) and converted to Parquet at the end
(``timings.parquet``, ``metrics.parquet``).

Why JSON lines rather than an Arrow IPC stream: a row must reach the disk the moment it is
measured, so every row is its own write.  One ``write(2)`` of a complete line on an
``O_APPEND`` file either happens or does not, so a killed writer leaves at most nothing
of the row it was writing; an Arrow stream of one-row batches would need the same care
and reads back far slower (one record batch per row).  ``pyarrow.json`` reads the lines
back quickly when the Parquet files are made.

Times are UTC nanoseconds since the epoch (``time.time_ns()``); durations are measured
with ``time.perf_counter_ns()`` so a clock step never makes one negative.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TIMINGS_STREAM = "timings.jsonl"
METRICS_STREAM = "metrics.jsonl"
SAMPLES_STREAM = "samples.jsonl"
TIMINGS_PARQUET = "timings.parquet"
METRICS_PARQUET = "metrics.parquet"
SAMPLES_PARQUET = "samples.parquet"

#: Columns of the timings table, in order.  ``phase`` groups rows ("bringup", "workload",
#: "fault", "teardown"...), ``op`` names the measured step inside it.
TIMINGS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("scenario", pa.string()),
        ("n_guests", pa.int64()),
        ("lab", pa.string()),
        ("guest", pa.string()),
        ("role", pa.string()),  # the guest's role(s) in its scenario, "+"-joined; "" if none
        ("lab_host", pa.string()),
        ("phase", pa.string()),
        ("op", pa.string()),
        ("start", pa.timestamp("ns", tz="UTC")),
        ("end", pa.timestamp("ns", tz="UTC")),
        ("duration_s", pa.float64()),
        ("ok", pa.bool_()),
        ("error_class", pa.string()),
        ("error", pa.string()),
        ("exit_status", pa.int64()),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("scenario", pa.string()),
        ("n_guests", pa.int64()),
        ("lab", pa.string()),
        ("guest", pa.string()),
        ("role", pa.string()),
        ("lab_host", pa.string()),
        ("t", pa.timestamp("ns", tz="UTC")),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        # How the report aggregates the metric over guests ("sum", "mean", "max", "p50"…);
        # empty: chosen by unit (harness.report.results).
        ("agg", pa.string()),
    ]
)

#: Resource samples (harness.telemetry): what guests and lab hosts spend, read from the host
#: side.  ``item`` tells apart several series of one resource (a host's CPU core); ``kind``
#: says whether the value is a counter (stored as counted; rates are derived when the report
#: reads it) or a gauge.
SAMPLES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("lab", pa.string()),
        ("lab_host", pa.string()),
        ("guest", pa.string()),
        ("t", pa.timestamp("ns", tz="UTC")),
        ("resource", pa.string()),
        ("item", pa.string()),
        ("kind", pa.string()),  # "counter" (monotonic) or "gauge"
        ("value", pa.float64()),
        ("unit", pa.string()),
    ]
)

_TIME_COLUMNS = {"start", "end", "t"}


class _AppendFile:
    """An O_APPEND file written one complete line per ``write(2)``, safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()

    def write_row(self, row: Mapping[str, Any]) -> None:
        data = (json.dumps(row, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"store {self.path} is closed")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def write_text(self, lines: str) -> None:
        """Many complete lines in one ``write(2)`` (a sampling round: thousands of rows)."""
        data = lines.encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"store {self.path} is closed")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


@dataclass
class Context:
    """What every row of one scenario shares; the recorder fills these columns in."""

    run_id: str
    scenario: str = ""
    n_guests: int = 0
    #: The lab of rows recorded without a guest (a row with a guest carries that guest's).
    lab: str = ""
    lab_host: str = ""
    #: guest name → its role(s) in this scenario ("server", "clients", "a+b"), for every row.
    guest_roles: Mapping[str, str] = field(default_factory=dict)


class Store:
    """Append-only timing and metric rows of one run directory."""

    def __init__(self, run_dir: Path, context: Context) -> None:
        self.run_dir = run_dir
        self.context = context
        #: guest name → lab host, for rows recorded without one (labs spread over hosts).
        self.lab_hosts: dict[str, str] = {}
        #: guest name → the lab it belongs to (names are unique across a run's labs).
        self.guest_labs: dict[str, str] = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        self._timings = _AppendFile(run_dir / TIMINGS_STREAM)
        self._metrics = _AppendFile(run_dir / METRICS_STREAM)
        self._samples = _AppendFile(run_dir / SAMPLES_STREAM)

    def scoped(self, **changes: Any) -> Recorder:
        """A recorder whose rows carry this store's context with ``changes`` applied."""
        ctx = Context(**{**self.context.__dict__, **changes})
        return Recorder(self, ctx)

    def add_timing(self, row: Mapping[str, Any]) -> None:
        self._timings.write_row(row)

    def add_metric(self, row: Mapping[str, Any]) -> None:
        self._metrics.write_row(row)

    def add_sample_lines(self, lines: str) -> None:
        """One sampling round's rows (JSON lines, made by the sampler), written at once; a
        kill mid-write leaves at most a torn last line, which reading drops."""
        self._samples.write_text(lines)

    def close(self) -> None:
        self._timings.close()
        self._metrics.close()
        self._samples.close()

    def finish(self) -> tuple[Path, ...]:
        """Close the streams and write the Parquet files."""
        self.close()
        return write_parquet(self.run_dir)


@dataclass
class Measurement:
    """Handed out by :meth:`Recorder.measure`; set ``ok``/``error`` or ``exit_status`` on it."""

    op: str
    ok: bool = True
    error_class: str | None = None
    error: str | None = None
    exit_status: int | None = None
    start_ns: int = 0
    end_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def fail(self, error_class: str, error: str) -> None:
        self.ok = False
        self.error_class = error_class
        self.error = error


class Recorder:
    """The API scenarios use to record timings and metrics without touching pandas."""

    def __init__(self, store: Store, context: Context) -> None:
        self.store = store
        self.context = context
        self.headline_metric: str | None = None

    def headline(self, metric: str) -> None:
        """Name the agent metric that is this scenario's result (as @pytest.mark.headline)."""
        self.headline_metric = metric

    def _base(self, guest: str | None) -> dict[str, Any]:
        c = self.context
        return {
            "run_id": c.run_id,
            "scenario": c.scenario,
            "n_guests": c.n_guests,
            "lab": self.store.guest_labs.get(guest or "", c.lab),
            "guest": guest or "",
            "role": c.guest_roles.get(guest or "", ""),
            "lab_host": c.lab_host or self.store.lab_hosts.get(guest or "", ""),
        }

    def timing(
        self,
        op: str,
        start_ns: int,
        end_ns: int,
        *,
        guest: str | None = None,
        phase: str = "workload",
        ok: bool = True,
        error_class: str | None = None,
        error: str | None = None,
        exit_status: int | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Record one timed row; ``duration_s`` defaults to ``end - start``."""
        row = self._base(guest)
        row.update(
            phase=phase,
            op=op,
            start=start_ns,
            end=end_ns,
            duration_s=(end_ns - start_ns) / 1e9 if duration_s is None else duration_s,
            ok=ok,
            error_class=error_class,
            error=error,
            exit_status=exit_status,
        )
        self.store.add_timing(row)

    @contextlib.contextmanager
    def measure(
        self, op: str, *, guest: str | None = None, phase: str = "workload"
    ) -> Iterator[Measurement]:
        """Time the ``with`` block as one row; an exception marks the row failed and propagates."""
        m = Measurement(op=op)
        wall0 = time.time_ns()
        mono0 = time.perf_counter_ns()
        try:
            yield m
        except BaseException as exc:
            m.fail(m.error_class or "exception", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            elapsed = time.perf_counter_ns() - mono0
            m.start_ns, m.end_ns = wall0, wall0 + elapsed
            self.timing(
                op,
                m.start_ns,
                m.end_ns,
                guest=guest,
                phase=phase,
                ok=m.ok,
                error_class=m.error_class,
                error=m.error,
                exit_status=m.exit_status,
                duration_s=elapsed / 1e9,
            )

    def metric(
        self,
        metric: str,
        value: float,
        *,
        unit: str = "",
        guest: str | None = None,
        t_ns: int | None = None,
        agg: str = "",
    ) -> None:
        row = self._base(guest)
        row.update(
            t=time.time_ns() if t_ns is None else t_ns, metric=metric, value=value, unit=unit,
            agg=agg,
        )
        self.store.add_metric(row)

    def timings(self) -> pd.DataFrame:
        """Every timing row of the run so far (all scenarios), as a DataFrame."""
        return _frame(read_stream(self.store.run_dir / TIMINGS_STREAM, TIMINGS_SCHEMA))

    def metrics(self) -> pd.DataFrame:
        return _frame(read_stream(self.store.run_dir / METRICS_STREAM, METRICS_SCHEMA))


def read_stream(path: Path, schema: pa.Schema) -> pa.Table:
    """Read an append-only stream back; a torn last line (writer killed) is dropped."""
    if not path.exists():
        return schema.empty_table()
    with path.open("rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        # The writer died in the middle of a line: everything before it is whole.
        data = data[: data.rfind(b"\n") + 1]
    if not data:
        return schema.empty_table()
    names = schema.names
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a damaged line must not cost the rest of the run
        for n in names:
            columns[n].append(row.get(n))
    arrays = []
    for f in schema:
        values = columns[f.name]
        if f.name in _TIME_COLUMNS:
            arrays.append(pa.array(values, type=pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_parquet(run_dir: Path) -> tuple[Path, ...]:
    """(Re)build ``timings.parquet`` and ``metrics.parquet`` from the streams of ``run_dir``."""
    out = []
    for stream, parquet, schema in (
        (TIMINGS_STREAM, TIMINGS_PARQUET, TIMINGS_SCHEMA),
        (METRICS_STREAM, METRICS_PARQUET, METRICS_SCHEMA),
        (SAMPLES_STREAM, SAMPLES_PARQUET, SAMPLES_SCHEMA),
    ):
        table = read_stream(run_dir / stream, schema)
        target = run_dir / parquet
        tmp = target.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, target)
        out.append(target)
    return tuple(out)


def load_timings(run_dir: Path) -> pd.DataFrame:
    """The timings of a run: from Parquet when written, else rebuilt from the stream."""
    if (run_dir / TIMINGS_PARQUET).exists():
        return _frame(pq.read_table(run_dir / TIMINGS_PARQUET))
    return _frame(read_stream(run_dir / TIMINGS_STREAM, TIMINGS_SCHEMA))


def load_metrics(run_dir: Path) -> pd.DataFrame:
    if (run_dir / METRICS_PARQUET).exists():
        return _frame(pq.read_table(run_dir / METRICS_PARQUET))
    return _frame(read_stream(run_dir / METRICS_STREAM, METRICS_SCHEMA))


def load_samples(run_dir: Path) -> pd.DataFrame:
    """A run's resource samples: from Parquet when written, else rebuilt from the stream."""
    if (run_dir / SAMPLES_PARQUET).exists():
        return _frame(pq.read_table(run_dir / SAMPLES_PARQUET))
    return _frame(read_stream(run_dir / SAMPLES_STREAM, SAMPLES_SCHEMA))


def _frame(table: pa.Table) -> pd.DataFrame:
    df: pd.DataFrame = table.to_pandas()
    if "guest" in df.columns and "role" not in df.columns:
        df["role"] = ""  # a run stored before rows carried roles
    return df
