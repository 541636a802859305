"""Running a scenario file through pytest in a child process, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from leaks import PROJECT


def run_scenario(tmp_path: Path, name: str, text: str, guests: int) -> Path:
    """Write ``text`` as ``scen/<name>`` under ``tmp_path``, run it with ``--guests``; the
    run's directory (the test fails, with pytest's output, unless the run passed)."""
    scen = tmp_path / "scen"
    scen.mkdir()
    (scen / name).write_text(text)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(scen), f"--guests={guests}", f"--rootdir={PROJECT}",
         f"--reports-dir={tmp_path / 'r'}", "-p", "no:cacheprovider", "-q"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    return (tmp_path / "r" / "latest").resolve()
