"""A live report: while a run goes on, its ``index.html`` (and plots) re-rendered every so
many seconds from the run's streams, each page replacing the last atomically, so a person can
watch a long experiment in a browser (``--live-report SECONDS``)."""

from __future__ import annotations

import threading
from pathlib import Path


class LiveReport(threading.Thread):
    def __init__(self, run_dir: Path, every: float, tz: str | None) -> None:
        super().__init__(name="live-report", daemon=True)
        self.run_dir, self.every, self.tz = run_dir, every, tz
        self.renders = 0
        self.last_error = ""
        self._stop_event = threading.Event()

    def run(self) -> None:
        from harness.report.render import render_report  # matplotlib only when asked for

        while not self._stop_event.wait(self.every):
            try:
                render_report(self.run_dir, tz=self.tz, live_every=self.every)
                self.renders += 1
            except Exception as exc:  # a page that cannot be drawn yet must not stop the run
                self.last_error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        """Stop after the rendering under way; the run's final report comes after."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=120)
