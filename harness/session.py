"""One run of the harness: its id, directory, timing store, run.json and the labs in it.

Shared by the pytest plugin and ``scalelab up``.  ``finish()`` writes the Parquet files,
run.json and the report, and points ``reports/latest`` at the run; it is safe to call
after a failure and more than once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.config import LabConfig
from harness.image.cache import Image
from harness.lab import Lab, ProgressFn
from harness.runinfo import (
    base_info,
    make_run_dir,
    new_run_id,
    point_latest,
    utc_now_iso,
    write_run_json,
)
from harness.state import list_states
from harness.store import Context, Recorder, Store


class Session:
    def __init__(self, config: LabConfig, *, progress: ProgressFn | None = None,
                 image: Image | None = None) -> None:
        self.config = config
        self.image = image
        self.progress = progress
        self.run_id = new_run_id()
        reports = Path(config.reports_dir)
        if not reports.is_absolute():
            reports = config.project_dir / reports
        self.reports_dir = reports
        self.run_dir = make_run_dir(reports, self.run_id)
        self.store = Store(self.run_dir, Context(run_id=self.run_id))
        self.info: dict[str, Any] = base_info(self.run_id, config.project_dir, config.report_tz)
        self.info["guests"] = config.guests
        self.info["backend"] = {"name": config.backend}
        self.info["config"] = {
            k: v for k, v in config.__dict__.items() if k != "project_dir"
        }
        self.labs: list[Lab] = []
        self.outcome: dict[str, int] = {}
        self._finished = False
        write_run_json(self.run_dir, self.info)
        point_latest(self.reports_dir, self.run_dir)

    def warn_leftovers(self, print_fn: Callable[[str], None]) -> None:
        dead = [s for s in list_states() if not s.owner_alive and not s.kept]
        if dead:
            ids = ", ".join(s.run_id for s in dead[:5]) + (" …" if len(dead) > 5 else "")
            print_fn(
                f"scalelab: {len(dead)} dead run(s) left resources behind ({ids}); "
                "remove them with `scalelab clean`"
            )

    def recorder(self, scenario: str = "", n_guests: int = 0) -> Recorder:
        return self.store.scoped(scenario=scenario, n_guests=n_guests)

    def lab_up(self, n: int, *, scenario: str = "bringup", sub: str | None = None,
               min_ready: float = 1.0, image: Image | None = None) -> Lab:
        """Bring up a lab of ``n`` guests inside this run (``sub`` names a side lab)."""
        run_id = self.run_id if sub is None else f"{self.run_id}-{sub}"
        lab_dir = self.run_dir if sub is None else self.run_dir / "labs" / sub
        lab_dir.mkdir(parents=True, exist_ok=True)
        lab_class: type[Lab] = Lab
        if self.config.cluster:
            # Spread over lab hosts; Dask is imported only when a cluster is asked for.
            from harness.cluster import ClusterLab

            lab_class = ClusterLab
        lab = lab_class(
            self.config, run_id, lab_dir, self.recorder(scenario, n), progress=self.progress,
            image=image or self.image,
        )
        self.labs.append(lab)
        lab.start(n, min_ready=min_ready)
        if image is None:
            self.image = lab.image
        if sub is None:
            self.info.update(lab.describe())
            write_run_json(self.run_dir, self.info)
        return lab

    def finish(self, *, render: bool = True, outcome: dict[str, int] | None = None) -> list[str]:
        """Take down labs not kept, write Parquet, run.json and the report. Never raises."""
        problems: list[str] = []
        for lab in reversed(self.labs):
            problems += lab.stop()
        if self._finished:
            return problems
        self._finished = True
        self.info["ended_utc"] = utc_now_iso()
        if outcome:
            self.info["outcome"] = outcome
        if problems:
            self.info["teardown_problems"] = problems
        try:
            self.store.finish()
        except Exception as exc:
            problems.append(f"writing parquet: {exc}")
        write_run_json(self.run_dir, self.info)
        if render:
            from harness.report import render_report

            try:
                render_report(self.run_dir, tz=self.config.report_tz)
            except Exception as exc:  # the data is safe on disk; say what failed
                problems.append(f"rendering the report: {exc}")
        return problems
