"""One LabConfig, built from CLI options, pytest options or ``[tool.scalelab]``.

The options are defined once (``OPTIONS``) and registered both on pytest's parser and on
the ``scalelab`` command's argparse parser, as pytest-benchmark does, so the two never
drift apart.  Precedence: command line > ``[tool.scalelab]`` in pyproject.toml > default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.backendurl import BackendURL, parse_backend
from harness.errors import UserError
from harness.image.recipe import Recipe, load_recipe
from harness.plumbing.units import parse_size
from harness.roles import RoleSpec
from harness.sessionbudget import MODES

MAX_GUESTS = 4096


def parse_guests(text: str | int) -> list[int]:
    """``"64"`` → [64]; ``"1,2,4"`` → [1, 2, 4] (a sweep). Anything else is a UserError."""
    raw = str(text).strip()
    parts = raw.split(",")
    out: list[int] = []
    for part in parts:
        p = part.strip()
        if not p:
            raise UserError(f"--guests={raw!r}: empty entry; give a number or a list like 1,2,4")
        try:
            n = int(p)
        except ValueError:
            raise UserError(f"--guests={raw!r}: {p!r} is not a whole number") from None
        if n < 1:
            raise UserError(f"--guests={raw!r}: the number of guests must be at least 1")
        if n > MAX_GUESTS:
            raise UserError(f"--guests={raw!r}: at most {MAX_GUESTS} guests per lab host")
        out.append(n)
    if len(set(out)) != len(out):
        raise UserError(f"--guests={raw!r}: a number appears twice")
    return sorted(out)


def _positive_int(name: str) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise UserError(f"--{name}={v!r}: not a whole number") from None
        if n < 1:
            raise UserError(f"--{name}={v!r}: must be at least 1")
        return n

    return parse


def _positive_float(name: str, zero_ok: bool = False) -> Callable[[Any], float | None]:
    def parse(v: Any) -> float | None:
        if v in (None, ""):
            return None
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise UserError(f"--{name}={v!r}: not a number") from None
        if x < 0 or (x == 0 and not zero_ok):
            raise UserError(f"--{name}={v!r}: must be {'0 or more' if zero_ok else 'above 0'}")
        return x

    return parse


def _size(name: str) -> Callable[[Any], str | None]:
    def parse(v: Any) -> str | None:
        if v in (None, ""):
            return None
        try:
            parse_size(str(v))
        except UserError:
            raise UserError(f"--{name}={v!r}: not a size like 256M or 1G") from None
        return str(v)

    return parse


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if str(v) not in choices:
            raise UserError(f"--{name}={v!r}: one of {', '.join(choices)}")
        return str(v)

    return parse


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).lower() in ("1", "true", "yes", "on")


def _opt_str(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


@dataclass(frozen=True)
class Option:
    """One option, registered on pytest and argparse alike."""

    name: str  # attribute name, e.g. "ssh_concurrency"
    help: str
    default: Any = None
    parse: Callable[[Any], Any] = _opt_str
    flag: bool = False

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: list[Option] = [
    Option("guests", "number of guests, or a list for a scaling sweep: 64 or 1,2,4,8", "8",
           parse_guests),
    Option("backend", "netns (default), qemu://?memory=256M, xen://local, xen://root@host:port",
           "netns"),
    Option("image", "image key or path (default: the recipe's image, built if missing)"),
    Option("recipe", "image recipe TOML file (default: [tool.scalelab.image] or the base)"),
    Option("report_tz", "time zone the report's plots are drawn in (default: TZ or the host's)"),
    Option("reports_dir", "where run directories are written", "reports"),
    Option("ssh_concurrency", "most SSH handshakes in flight at once", 32,
           _positive_int("ssh-concurrency")),
    Option("fanout_workers", "threads that fan commands out to the guests", 64,
           _positive_int("fanout-workers")),
    Option("keep_guests", "leave the lab up after the session (until `scalelab down`)", False,
           _bool, flag=True),
    Option("guest_memory", "memory limit per guest, e.g. 256M", None, _size("guest-memory")),
    Option("guest_cpus", "CPU share per guest, e.g. 0.5", None, _positive_float("guest-cpus")),
    Option("subnet", "lab subnet (default: a free one in 10.213.0.0/16)"),
    Option("ready_timeout", "seconds a guest may take to answer SSH", 300.0,
           _positive_float("ready-timeout")),
    Option("cluster", "Dask scheduler (tcp://host:8786) or local:K to spread the lab"),
    Option("vxlan_port", "UDP port of the VXLAN tunnels joining the lab hosts' bridges "
           "(--cluster)", 4789, _positive_int("vxlan-port")),
    Option("sample_interval", "seconds between resource samples of guests and host (0: off)",
           1.0, _positive_float("sample-interval", zero_ok=True)),
    Option("live_report", "re-render the report every SECONDS while the run goes on (0: off)",
           0.0, _positive_float("live-report", zero_ok=True)),
    Option("sessions", "a persistent executor session per guest: auto (on unless the host's "
           "memory cannot hold N of them), on, off", "auto", _choice("sessions", MODES)),
    Option("roles", "roles dealt out over the lab's guests, e.g. server=1,clients=rest "
           "(a scenario's @pytest.mark.roles overrides them)"),
]


@dataclass
class LabConfig:
    guests: list[int] = field(default_factory=lambda: [8])
    backend: str = "netns"
    image: str | None = None
    recipe: str | None = None
    report_tz: str | None = None
    reports_dir: str = "reports"
    ssh_concurrency: int = 32
    fanout_workers: int = 64
    keep_guests: bool = False
    guest_memory: str | None = None
    guest_cpus: float | None = None
    subnet: str | None = None
    ready_timeout: float = 300.0
    cluster: str | None = None
    vxlan_port: int = 4789
    sample_interval: float = 1.0
    live_report: float = 0.0
    roles: str | None = None
    sessions: str = "auto"
    project_dir: Path = field(default_factory=Path.cwd)
    #: ``backend`` parsed, and the image recipe loaded, once, when the config is made: the
    #: layers below read these and never parse the text again.
    backend_url: BackendURL = field(init=False, repr=False)
    recipe_spec: Recipe = field(init=False, repr=False)
    role_spec: RoleSpec | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.role_spec = RoleSpec.parse(self.roles) if self.roles else None
        if self.role_spec is not None and self.role_spec.minimum > self.max_guests:
            raise UserError(f"--roles={self.roles}: needs at least {self.role_spec.minimum} "
                            f"guests; --guests is {self.max_guests}")
        self.backend_url = parse_backend(self.backend)
        self.recipe_spec = load_recipe(Path(self.recipe) if self.recipe else None,
                                       self.project_dir)

    @property
    def max_guests(self) -> int:
        return max(self.guests)

    def settings(self) -> dict[str, Any]:
        """What the user set, for run.json (the parsed forms are derived from these)."""
        derived = {"project_dir", "backend_url", "recipe_spec", "role_spec"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in derived}


def pyproject_defaults(project_dir: Path) -> dict[str, Any]:
    """``[tool.scalelab]`` from ``project_dir/pyproject.toml`` (without the image table)."""
    path = project_dir / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    table = dict(data.get("tool", {}).get("scalelab", {}))
    table.pop("image", None) if isinstance(table.get("image"), dict) else None
    known = {o.name for o in OPTIONS}
    unknown = sorted(k for k in table if k.replace("-", "_") not in known)
    if unknown:
        raise UserError(f"{path} [tool.scalelab]: unknown key(s) {', '.join(unknown)}")
    return {k.replace("-", "_"): v for k, v in table.items()}


def build_config(given: dict[str, Any], project_dir: Path) -> LabConfig:
    """Merge ``given`` (options the user set; None = not set) over pyproject and defaults."""
    merged: dict[str, Any] = {}
    defaults = pyproject_defaults(project_dir)
    for opt in OPTIONS:
        value = given.get(opt.name)
        if value is None or (opt.flag and value is False):
            value = defaults.get(opt.name, opt.default)
        merged[opt.name] = opt.parse(value) if value is not None else None
    names = {f.name for f in fields(LabConfig) if f.init}
    cfg = LabConfig(**{k: v for k, v in merged.items() if k in names and v is not None},
                    project_dir=project_dir)
    if cfg.report_tz is not None:
        from harness.report.zones import resolve_zone

        resolve_zone(cfg.report_tz)  # an unknown zone fails now, not after the run
    return cfg
