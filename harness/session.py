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
from harness.inventory import InventoryLab, write_inventory
from harness.lab import DEFAULT_LAB, Lab, ProgressFn
from harness.report.live import LiveReport
from harness.roles import Roles, RoleSpec
from harness.runinfo import (
    base_info,
    make_run_dir,
    new_run_id,
    point_latest,
    utc_now_iso,
    write_run_json,
)
from harness.ssh import write_exports
from harness.state import list_states
from harness.store import Context, Recorder, Store
from harness.telemetry.sampler import Sampler


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
        self.info["config"] = config.settings()
        self.labs: list[Lab] = []
        self.outcome: dict[str, int] = {}
        self._finished = False
        write_run_json(self.run_dir, self.info)
        point_latest(self.reports_dir, self.run_dir)
        self.sampler: Sampler | None = None
        if config.sample_interval > 0:
            self.sampler = Sampler(self.store, lambda: list(self.labs), config.sample_interval)
            self.sampler.start()
        self.live: LiveReport | None = None
        if config.live_report > 0:
            self.live = LiveReport(self.run_dir, config.live_report, config.report_tz)
            self.live.start()

    def warn_leftovers(self, print_fn: Callable[[str], None]) -> None:
        dead = [s for s in list_states() if not s.owner_alive and not s.kept]
        if dead:
            ids = ", ".join(s.run_id for s in dead[:5]) + (" …" if len(dead) > 5 else "")
            print_fn(
                f"scalelab: {len(dead)} dead run(s) left resources behind ({ids}); "
                "remove them with `scalelab clean`"
            )

    def recorder(self, scenario: str = "", n_guests: int = 0, lab: str = "",
                 guest_roles: dict[str, str] | None = None) -> Recorder:
        return self.store.scoped(scenario=scenario, n_guests=n_guests, lab=lab,
                                 guest_roles=guest_roles or {})

    def lab_name(self, wanted: str) -> str:
        """``wanted``, or ``wanted-2``, ``-3``… if the run already has a lab of that name."""
        taken = {lab.name for lab in self.labs}
        name, k = wanted, 1
        while name in taken:
            k += 1
            name = f"{wanted}-{k}"
        return name

    def lab_up(self, n: int, *, scenario: str = "bringup", name: str = DEFAULT_LAB,
               min_ready: float = 1.0, image: Image | None = None,
               roles: RoleSpec | None = None) -> Lab:
        """Bring up a lab of ``n`` guests inside this run (``roles`` dealt out over it).

        The default lab is the run's own (its files are the run directory's); any other
        ``name`` is a further lab with its directory under ``labs/`` and guests named
        ``<name>-g000``…, made unique in the run by :meth:`lab_name`.
        """
        main = name == DEFAULT_LAB and all(lab.name != DEFAULT_LAB for lab in self.labs)
        name = name if main else self.lab_name(name)
        run_id = self.run_id if main else f"{self.run_id}-{name}"
        lab_dir = self.run_dir if main else self.run_dir / "labs" / name
        lab_dir.mkdir(parents=True, exist_ok=True)
        lab_class: type[Lab] = Lab
        if self.config.cluster:
            # Spread over lab hosts; Dask is imported only when a cluster is asked for.
            from harness.cluster import ClusterLab

            lab_class = ClusterLab
        lab = lab_class(
            self.config, run_id, lab_dir, self.recorder(scenario, n, name),
            progress=self.progress, image=image or self.image, name=name, run=self.run_id,
            report_dir=self.run_dir,
        )
        self.labs.append(lab)
        lab.start(n, min_ready=min_ready)
        if roles is not None:
            lab.require_fleet().roles = lab.deal_roles(roles)
        if image is None:
            self.image = lab.image
        if main:
            self.info.update(lab.describe())
        self.info["labs"] = {lab.name: lab.describe() for lab in self.labs if lab.guests}
        write_run_json(self.run_dir, self.info)
        self.write_exports()
        return lab

    def write_exports(self) -> None:
        """The run's ``ssh_config``/``known_hosts``: every guest of every lab that is up.

        Called when a lab comes up and when side labs go down during the run; the labs taken
        down at the end of the run stay listed (the files say who was in the run)."""
        labs = [InventoryLab(lab.name, lab.guests, lab.key_path, lab.roles)
                for lab in self.labs if lab.up and lab.key_path is not None]
        if labs:
            write_exports(self.run_dir, [(lab.guests, lab.key_path) for lab in labs])
            write_inventory(self.run_dir, labs)

    def sample_now(self) -> None:
        """A sampling round now (labs about to go down: their last state is in the run)."""
        if self.sampler is not None and self.sampler.is_alive():
            self.sampler.sample_once()

    def deal_roles(self, lab: Lab, spec: RoleSpec, names: list[str]) -> Roles:
        """Roles for one scenario's guests; the inventory and run.json learn any new ones."""
        before = lab.roles
        roles = lab.deal_roles(spec, names)
        if lab.roles != before:
            self.info.setdefault("labs", {}).setdefault(lab.name, {})["roles"] = {
                r: list(ns) for r, ns in lab.roles.members_of.items()}
            write_run_json(self.run_dir, self.info)
            self.write_exports()
        return roles

    def finish(self, *, render: bool = True, outcome: dict[str, int] | None = None,
               tests: list[dict[str, Any]] | None = None) -> list[str]:
        """Take down labs not kept, write Parquet, run.json and the report. Never raises.

        ``tests`` are the outcomes of the run's tests (a skip or failure with its reason),
        kept in run.json for the report."""
        problems: list[str] = []
        if self.live is not None:
            self.live.stop()  # the final report comes after the run's last rows
            self.info["live_report"] = {"every_s": self.live.every, "renders": self.live.renders,
                                        "last_error": self.live.last_error or None}
        if self.sampler is not None:
            self.sampler.stop()  # its last round comes before the labs go down
            self.info["sampler"] = {"rounds": self.sampler.rounds,
                                    "interval_s": self.sampler.interval,
                                    "cpu_seconds": round(self.sampler.cpu_seconds, 3)}
        for lab in reversed(self.labs):
            problems += lab.stop()
        if self._finished:
            return problems
        self._finished = True
        self.info["ended_utc"] = utc_now_iso()
        if outcome:
            self.info["outcome"] = outcome
        if tests is not None:
            self.info["tests"] = tests
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
