"""Results that come back from the guests: one JSON value per guest, and files copied back
into the run's ``guests/`` folder — what scenarios otherwise write by hand with ``cat`` and
``json.loads`` on every guest's stdout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from harness.ssh import Failure, FanOut, GroupResult, GuestError
from harness.store import Recorder

#: The most a fetched file may hold: it is read into memory (a cluster shard sends it back
#: as one message), so a result file, not a disk image.
MAX_FETCH_BYTES = 64 * 1024 * 1024


@dataclass
class Gathered:
    """guest → the JSON value its command printed, and the command results behind them."""

    values: dict[str, Any] = field(default_factory=dict)
    group: GroupResult = field(default_factory=GroupResult)

    def __getitem__(self, guest: str) -> Any:
        return self.values[guest]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def ok(self) -> bool:
        return self.group.ok


def parse_json_result(stdout: str) -> Any:
    """The command's stdout as one JSON value; else its last non-empty line as one (a
    program that logs before it prints its result). ValueError when neither parses."""
    text = stdout.strip()
    if not text:
        raise ValueError("it printed nothing")
    try:
        return json.loads(text)
    except ValueError:
        last = text.splitlines()[-1].strip()
        try:
            return json.loads(last)
        except ValueError:
            raise ValueError(f"neither it nor its last line is JSON: {last[:80]!r}") from None


def json_results(group: GroupResult) -> Gathered:
    """Parse each successful guest's stdout; a guest whose output is not JSON becomes an
    ``output`` failure of the group (so its row and the quorum count it as failed)."""
    out = Gathered(group=group)
    for name, res in list(group.results.items()):
        if not getattr(res, "ok", False):
            continue
        try:
            out.values[name] = parse_json_result(str(res.stdout))
        except ValueError as exc:
            del group.results[name]
            group.errors[name] = GuestError(name, Failure.OUTPUT,
                                            f"stdout is not one JSON value: {exc}")
    return out


def fetch_files(fleet: FanOut, recorder: Recorder, remote: str, dest: Path, *,
                names: Iterable[str] | None = None, subdir: str = "",
                max_bytes: int = MAX_FETCH_BYTES) -> dict[str, Path]:
    """Copy ``remote`` from every guest to ``dest/<guest>/<subdir>/<its file name>``; one ``fetch``
    row per guest (a missing or oversized file is an ``output`` failure with its reason).
    Returns guest → local path for the guests whose file came back."""
    basename = Path(remote).name or "file"

    def read(name: str, client: paramiko.SSHClient) -> bytes:
        with client.open_sftp() as sftp:
            try:
                size = sftp.stat(remote).st_size or 0
            except OSError:
                raise GuestError(name, Failure.OUTPUT, f"{remote}: no such file") from None
            if size > max_bytes:
                raise GuestError(name, Failure.OUTPUT,
                                 f"{remote} holds {size} bytes, more than {max_bytes}")
            with sftp.open(remote, "rb") as f:
                f.prefetch(size)
                return bytes(f.read())

    start = time.time_ns()
    group = fleet.map(read, names)
    end = time.time_ns()
    paths: dict[str, Path] = {}
    for name, data in group.results.items():
        path = dest / name / subdir / basename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
        recorder.timing("fetch", start, end, guest=name, phase="collect")
    for name, err in group.errors.items():
        recorder.timing("fetch", start, end, guest=name, phase="collect", ok=False,
                        error_class=err.error_class, error=err.message[:500])
    return paths
