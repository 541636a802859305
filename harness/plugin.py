"""The pytest plugin: options, fixtures, sweep parametrisation, progress and the report.

Registered through the ``pytest11`` entry point.  Nothing starts unless a test asks for a
lab fixture, so the plugin is harmless in test suites that do not use it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends import backend_class
from harness.backends.base import Guest
from harness.config import OPTIONS, LabConfig, build_config
from harness.errors import LabError, UserError
from harness.faults import Nemesis
from harness.image.ensure import ensure_image
from harness.lab import DEFAULT_LAB, Lab
from harness.preflight import preflight_lab
from harness.progress import TerminalProgress
from harness.roles import Roles, RolesDontFit, RoleSpec
from harness.session import Session
from harness.ssh import FanOut
from harness.store import Recorder
from harness.workloads import Agents

_CONFIG_KEY = pytest.StashKey[LabConfig]()
_SESSION_KEY = pytest.StashKey["Session"]()
_OUTCOME_KEY = pytest.StashKey[dict[str, int]]()
_TESTS_KEY = pytest.StashKey[list[dict[str, Any]]]()
_ROLES_KEY = pytest.StashKey[RoleSpec]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scalelab", "scalelab: guests, backend, report")
    for opt in OPTIONS:
        if opt.flag:
            group.addoption(opt.cli, dest=f"scalelab_{opt.name}", action="store_true",
                            default=None, help=opt.help)
        else:
            group.addoption(opt.cli, dest=f"scalelab_{opt.name}", default=None, help=opt.help,
                            metavar=opt.name.upper())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quorum(fraction): the share of guests that must succeed")
    config.addinivalue_line("markers", "recipe(path): the image recipe this scenario needs")
    config.addinivalue_line("markers", "roles(**counts): roles dealt out over the guests, "
                            "e.g. roles(server=1, clients='rest'); fleet.role(name)")
    config.addinivalue_line("markers", "headline(metric): the agent metric that is this "
                            "scenario's result (the report's summary and knee use it)")
    if _under_xdist(config):
        raise pytest.UsageError(
            "scalelab: do not run scenarios under pytest-xdist (-n): every worker would boot "
            "its own guests; the lab is already parallel"
        )
    given = {o.name: config.getoption(f"scalelab_{o.name}") for o in OPTIONS}
    try:
        lab_config = build_config(given, Path(str(config.rootpath)))
    except UserError as err:
        raise pytest.UsageError(f"scalelab: {err}") from None
    config.stash[_CONFIG_KEY] = lab_config
    config.stash[_OUTCOME_KEY] = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    config.stash[_TESTS_KEY] = []


def _under_xdist(config: pytest.Config) -> bool:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return True
    n = getattr(config.option, "numprocesses", None)
    return bool(n) and n != 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers are read once, here: a bad ``roles`` marker stops the run before any lab."""
    for item in items:
        marker = item.get_closest_marker("roles")
        if marker is None:
            continue
        if marker.args:
            raise pytest.UsageError(f"scalelab: {item.nodeid}: @pytest.mark.roles takes "
                                    "keywords only, e.g. roles(server=1, clients='rest')")
        try:
            item.stash[_ROLES_KEY] = RoleSpec.of(marker.kwargs.items(),
                                                 where=f"{item.nodeid}: @pytest.mark.roles")
        except UserError as err:
            raise pytest.UsageError(f"scalelab: {err}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "n_guests" in metafunc.fixturenames:
        sweep = metafunc.config.stash[_CONFIG_KEY].guests
        metafunc.parametrize("n_guests", sweep, ids=[f"n={n}" for n in sweep], scope="function")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    counts = item.config.stash.get(_OUTCOME_KEY, None)
    if counts is None:
        return report
    outcome: str | None = None
    if report.when == "call":
        outcome = report.outcome
    elif report.failed:
        outcome = "error"
    elif report.skipped and report.when == "setup":
        outcome = "skipped"
    if outcome is not None:
        counts[outcome] = counts.get(outcome, 0) + 1
        item.config.stash[_TESTS_KEY].append(_test_record(item, report, outcome))
    return report


def _test_record(item: pytest.Item, report: pytest.TestReport, outcome: str) -> dict[str, Any]:
    """One test's outcome for run.json and the report: a skip or failure says why."""
    reason = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        reason = report.longreprtext.strip().splitlines()[-1][:300] if report.longreprtext else ""
    callspec = getattr(item, "callspec", None)
    n = callspec.params.get("n_guests") if callspec is not None else None
    headline = item.get_closest_marker("headline")
    rec = item.funcargs.get("recorder") if isinstance(item, pytest.Function) else None
    named = rec.headline_metric if isinstance(rec, Recorder) else None  # recorder.headline()
    return {"test": item.name, "nodeid": item.nodeid, "n_guests": n, "outcome": outcome,
            "when": report.when, "duration_s": round(report.duration, 3), "reason": reason,
            "headline": named or (str(headline.args[0]) if headline and headline.args else None)}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    s = session.config.stash.get(_SESSION_KEY, None)
    if s is None:
        return
    counts: dict[str, int] = session.config.stash[_OUTCOME_KEY]
    problems = s.finish(outcome=dict(counts), tests=session.config.stash[_TESTS_KEY])
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        for p in problems:
            tr.write_line(f"scalelab: {p}", red=True)
        kept = [lab for lab in s.labs if lab.up]
        if kept:
            shown = ", ".join(f"{lab.name} ({lab.guests[0].name}…)" for lab in kept)
            tr.write_line(f"scalelab: run {s.run_id} kept up with {len(kept)} lab(s): {shown}; "
                          f"ssh -F {s.run_dir}/ssh_config <guest>; take it all down with "
                          f"`scalelab down {s.run_id}`")
        tr.write_line(f"scalelab: report in {s.run_dir}/index.html")


# -- fixtures ------------------------------------------------------------------------------


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab_config(request: pytest.FixtureRequest) -> LabConfig:
    """The merged configuration (options > [tool.scalelab] > defaults)."""
    return request.config.stash[_CONFIG_KEY]


@pytest.fixture(scope="session")
def scalelab_session(request: pytest.FixtureRequest, lab_config: LabConfig) -> Session:
    """The run: its id, directory and timing store. Created on first use."""
    # SIGTERM must unwind like Ctrl-C so that every guest is taken down.
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm)
    progress = TerminalProgress(request.config)
    try:
        image = preflight_lab(lab_config, lab_config.max_guests)
        s = Session(lab_config, progress=progress, image=image)
    except UserError as err:
        pytest.exit(f"scalelab: {err}", returncode=pytest.ExitCode.USAGE_ERROR)
    request.config.stash[_SESSION_KEY] = s
    s.warn_leftovers(lambda m: progress.write(m, rewrite=False))
    return s


@pytest.fixture(scope="session")
def _lab_pool(scalelab_session: Session, lab_config: LabConfig) -> Iterator[dict[str, Lab]]:
    """Labs of this session, one per image: brought up on first use, taken down at the end
    (or kept with --keep-guests)."""
    pool: dict[str, Lab] = {}
    try:
        yield pool
    finally:
        scalelab_session.sample_now()  # the labs' last state, before they go
        if lab_config.keep_guests and pool:
            for the_lab in pool.values():
                the_lab.keep()
        else:
            for the_lab in pool.values():
                the_lab.stop()


def _recipe_of(request: pytest.FixtureRequest) -> Path | None:
    marker = request.node.get_closest_marker("recipe")
    if marker is None or not marker.args:
        return None
    path = Path(str(marker.args[0]))
    if not path.is_absolute():
        path = Path(str(request.node.path)).parent / path
    return path.resolve()


def _recipe_lab_name(recipe: Path, image_recipe: str) -> str:
    """A recipe lab is named after its recipe (its ``name``, else the file's stem)."""
    wanted = image_recipe if image_recipe != DEFAULT_LAB else recipe.stem
    clean = "".join(c if c.isalnum() else "-" for c in wanted.lower()).strip("-")
    return clean or "recipe"


@pytest.fixture
def lab(request: pytest.FixtureRequest, _lab_pool: dict[str, Lab],
        scalelab_session: Session, lab_config: LabConfig) -> Lab:
    """The guests of this run, brought up once (for the largest N of a sweep) and taken
    down at the end of the session, whatever happened.  A scenario marked
    ``@pytest.mark.recipe("file.toml")`` gets a lab of that recipe's image instead, named
    after the recipe (its guests ``<recipe>-g000``…)."""
    recipe = _recipe_of(request)
    key = str(recipe) if recipe else ""
    if key not in _lab_pool:
        try:
            if recipe is None:
                the_lab = scalelab_session.lab_up(lab_config.max_guests,
                                                  roles=lab_config.role_spec)
            else:
                image = ensure_image(
                    dataclasses.replace(lab_config, recipe=str(recipe), image=None),
                    vm=backend_class(lab_config.backend_url).needs_vm_image,
                )
                the_lab = scalelab_session.lab_up(
                    lab_config.max_guests, image=image,
                    name=_recipe_lab_name(recipe, str(image.info()["recipe"])),
                    roles=lab_config.role_spec,
                )
        except UserError as err:
            pytest.exit(f"scalelab: {err}", returncode=pytest.ExitCode.USAGE_ERROR)
        except LabError as err:
            pytest.fail(f"scalelab: {err}", pytrace=False)
        _lab_pool[key] = the_lab
    return _lab_pool[key]


@pytest.fixture
def n_guests(request: pytest.FixtureRequest, lab_config: LabConfig) -> int:
    """The N of this test (parametrised by --guests); the largest N if not swept."""
    return int(getattr(request, "param", lab_config.max_guests))


@pytest.fixture
def guests(lab: Lab, n_guests: int) -> list[Guest]:
    """The first ``n_guests`` guests that are up."""
    fleet = lab.require_fleet()
    by_name = {g.name: g for g in lab.guests}
    return [by_name[n] for n in fleet.names[:n_guests]]


@pytest.fixture
def roles(request: pytest.FixtureRequest, lab: Lab, guests: list[Guest],
          scalelab_session: Session, lab_config: LabConfig) -> Roles:
    """This test's roles, dealt out over its guests in order: its ``@pytest.mark.roles``,
    else the lab's ``--roles``, else none.  An N too small for them skips that N, saying
    how many guests the roles need (a sweep's N=1 for a client/server scenario)."""
    spec = request.node.stash.get(_ROLES_KEY, None) or lab_config.role_spec
    if spec is None:
        return Roles()
    try:
        return scalelab_session.deal_roles(lab, spec, [g.name for g in guests])
    except RolesDontFit as err:
        pytest.skip(str(err))


@pytest.fixture
def fleet(lab: Lab, guests: list[Guest], roles: Roles) -> FanOut:
    """Fan-out over this test's guests (connections are shared with the lab), with its
    roles: ``fleet.role("server")``."""
    sub = lab.require_fleet().subset(g.name for g in guests)
    sub.roles = roles
    return sub


@pytest.fixture
def recorder(scalelab_session: Session, request: pytest.FixtureRequest,
             n_guests: int) -> Recorder:
    """Timing and metric rows of this test, tagged with its name, N and (when the test uses
    one) its lab; a row about a guest always carries that guest's lab and role."""
    lab_name = ""
    guest_roles: dict[str, str] = {}
    if "lab" in request.fixturenames:
        lab_name = request.getfixturevalue("lab").name
        guest_roles = request.getfixturevalue("roles").labels()
    return scalelab_session.recorder(request.node.name, n_guests, lab_name, guest_roles)


@pytest.fixture
def lab_factory(
    scalelab_session: Session, request: pytest.FixtureRequest
) -> Iterator[Callable[[int], Lab]]:
    """Bring up fresh side labs inside the test (a boot storm per N); all taken down after.

    Each is a lab of its own in the run, named ``name`` (``side`` unless given) and a number
    (``side1``, ``side2``…), its guests ``side1-g000``…"""
    made: list[Lab] = []

    def make(n: int, min_ready: float = 1.0, name: str = "side") -> Lab:
        lab = scalelab_session.lab_up(
            n, scenario=request.node.name, min_ready=min_ready,
            name=scalelab_session.lab_name(f"{name}{len(scalelab_session.labs) + 1}"),
        )
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        if made:
            scalelab_session.sample_now()
        for lab in made:
            lab.stop()
        if made:
            scalelab_session.write_exports()  # the run's files name only labs still up


@pytest.fixture
def agents(fleet: FanOut, recorder: Recorder, scalelab_session: Session) -> Iterator[Agents]:
    """Deploy and run agents on this test's guests; output lands in the timing store.

    Servers the test started (``agents.serve``) are stopped when it ends, passed or failed,
    so the next test (the next N of a sweep) finds the lab as it was."""
    the_agents = Agents(fleet, recorder, log_dir=scalelab_session.run_dir / "guests")
    try:
        yield the_agents
    finally:
        the_agents.close()


@pytest.fixture
def quorum(request: pytest.FixtureRequest) -> float:
    """The share of guests that must succeed: ``@pytest.mark.quorum(0.95)``, else 1.0."""
    marker = request.node.get_closest_marker("quorum")
    return float(marker.args[0]) if marker and marker.args else 1.0


@pytest.fixture
def nemesis(lab: Lab, recorder: Recorder) -> Iterator[Nemesis]:
    """Inject faults into this test's guests; each fault becomes a timed row."""
    nem = Nemesis(lab.backend, recorder, lab.require_fleet())
    try:
        yield nem
    finally:
        nem.close()
