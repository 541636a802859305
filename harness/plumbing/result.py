"""``CommandResult``: what one command did, on the host or in a guest (testinfra's idea)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    """One finished command: where it ran (``guest``; empty for this host), what it said,
    and when (UTC nanoseconds).  SSH commands and host commands return the same type."""

    guest: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    start_ns: int
    end_ns: int

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def message(self) -> str:
        """What the command said, for an error line: its first lines naming an error (a
        tool's first error is the cause, the rest is its clean-up), else its last lines."""
        text = self.stderr.strip() or self.stdout.strip() or f"exit status {self.exit_status}"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return " | ".join(errors[:3] if errors else lines[-4:])
