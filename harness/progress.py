"""Bring-up progress on pytest's terminal: one line rewritten in place, milestones else."""

from __future__ import annotations

import pytest


class TerminalProgress:
    """One line rewritten in place on a terminal (pytest-xdist style), milestones elsewhere."""

    def __init__(self, config: pytest.Config) -> None:
        self.tr = config.pluginmanager.get_plugin("terminalreporter")
        self.capman = config.pluginmanager.get_plugin("capturemanager")
        self.tty = bool(self.tr is not None and self.tr.isatty())
        self._last_milestone = -1

    def write(self, text: str, *, rewrite: bool) -> None:
        if self.tr is None:
            return
        ctx = self.capman.global_and_fixture_disabled() if self.capman else _NoCapture()
        with ctx:
            if rewrite:
                self.tr.rewrite(text, erase=True)
            else:
                self.tr.write_line(text)

    def __call__(self, total: int, started: int, ready: int, failed: int) -> None:
        line = f"bringing up {total}: {started} started, {ready} ssh-ready"
        if failed:
            line += f", {failed} failed"
        done = ready + failed == total
        if self.tty:
            self.write(line, rewrite=True)
            if done:
                self.write("", rewrite=False)
            return
        # Plain output: one line when every guest is started, one when all are settled.
        if done or (started == total and self._last_milestone < 0):
            self._last_milestone = ready + failed
            self.write(line, rewrite=False)


class _NoCapture:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
