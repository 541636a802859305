"""Image recipes: parsing, cache keys, failing builds, and a recipe image really running."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from leaks import PROJECT, snapshot

from harness.config import build_config
from harness.errors import UserError
from harness.image import cache
from harness.image.build import build
from harness.image.ensure import ensure_image
from harness.image.recipe import Recipe, load_recipe
from harness.lab import Lab
from harness.session import Session

NGINX = PROJECT / "scenarios" / "recipes" / "nginx.toml"


def write(tmp: Path, text: str) -> Path:
    p = tmp / "recipe.toml"
    p.write_text(text)
    return p


def test_parse_recipe(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "run.sh").write_text("echo hi\n")
    r = load_recipe(write(tmp_path, """
suite = "bookworm"
packages = ["nginx-light"]
steps = ["echo one", "echo two"]
services = ["nginx -g 'daemon off;'"]
[[files]]
src = "agent"
dest = "/opt/agent"
mode = "0755"
"""))
    assert r.packages == ("nginx-light",)
    assert r.steps == ("echo one", "echo two")
    assert r.files[0].dest == "/opt/agent" and r.files[0].mode == 0o755
    assert r.files[0].src == (tmp_path / "agent").resolve()
    assert "openssh-server" in r.all_packages() and "nginx-light" in r.all_packages()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("packges = ['x']", "unknown recipe key"),
        ("packages = 'nginx'", "must be a list of strings"),
        ("[[files]]\nsrc = 'nope'\ndest = '/x'", "does not exist"),
        ("[[files]]\nsrc = '.'\ndest = 'relative'", "absolute path"),
        ("[[files]]\nsrc = '.'\ndest = '/x'\nmode = '999'", "not octal"),
        ("this is = not toml [", "not valid TOML"),
    ],
)
def test_bad_recipes(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_recipe(write(tmp_path, text))


def test_pyproject_recipe(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.scalelab.image]\npackages = ["jq"]\n')
    assert load_recipe(None, tmp_path).packages == ("jq",)
    assert load_recipe(None, tmp_path / "nowhere") == Recipe()


def test_cache_keys(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("one")
    base = load_recipe(write(tmp_path, "packages = ['a']\n[[files]]\nsrc = 'f.txt'\ndest = '/f'"))
    same = load_recipe(write(tmp_path, "packages = ['a']\n[[files]]\nsrc = 'f.txt'\ndest = '/f'"))
    assert base.key() == same.key()
    variants = [
        "packages = ['b']\n[[files]]\nsrc = 'f.txt'\ndest = '/f'",
        "packages = ['a']\nsteps = ['true']\n[[files]]\nsrc = 'f.txt'\ndest = '/f'",
        "suite = 'trixie'\npackages = ['a']\n[[files]]\nsrc = 'f.txt'\ndest = '/f'",
        "packages = ['a']\n[[files]]\nsrc = 'f.txt'\ndest = '/g'",
        "packages = ['a']\nservices = ['x']\n[[files]]\nsrc = 'f.txt'\ndest = '/f'",
    ]
    keys = {load_recipe(write(tmp_path, v)).key() for v in variants}
    assert base.key() not in keys and len(keys) == len(variants)
    assert base.with_mirror("http://other/debian").key() != base.key()
    assert base.with_vm().key() != base.key()
    old = base.key()
    f.write_text("two")  # the copied file's content is part of the key
    assert base.key() != old


def _cache_entries(*recipes: Recipe) -> set[str]:
    """Cache entries (built or half-built) of these recipes."""
    from harness.image.build import host_mirror

    keys = {r.with_mirror(host_mirror()).key() for r in recipes}
    root = cache.images_root()
    names = {p.name for p in root.iterdir()} if root.is_dir() else set()
    return {n for n in names if any(k in n for k in keys)}


@pytest.mark.integration
def test_failing_builds_leave_the_cache_clean(root: None) -> None:
    failing = Recipe(steps=("echo about to fail; false",), name="fails")
    missing = Recipe(packages=("no-such-package-scalelab",), name="nopkg")
    mounts = snapshot().mounts
    with pytest.raises(UserError, match=r"step 1") as err:
        build(failing)
    assert "full log" in str(err.value)
    with pytest.raises(UserError, match="no-such-package-scalelab"):
        build(missing)
    assert _cache_entries(failing, missing) == set()
    assert snapshot().mounts == mounts


@pytest.fixture(scope="module")
def nginx_lab(root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    cfg = build_config({"guests": "2", "recipe": str(NGINX),
                        "reports_dir": str(tmp_path_factory.mktemp("r"))}, PROJECT)
    s = Session(cfg, image=ensure_image(cfg))
    try:
        yield s.lab_up(2)
    finally:
        s.finish(render=False)


@pytest.mark.integration
def test_recipe_image_in_a_running_guest(nginx_lab: Lab) -> None:
    fleet = nginx_lab.require_fleet()
    res = fleet.run("command -v nginx wrk && cat /etc/nginx/sites-enabled/lab.conf && "
                    "stat -c %a /etc/nginx/sites-enabled/lab.conf && test -s /var/www/html/16k.txt")
    assert res.ok, res.failed
    out = res[fleet.names[0]].stdout
    assert "/usr/sbin/nginx" in out and "/usr/bin/wrk" in out
    assert "keepalive_requests" in out and out.strip().endswith("644")
    # The recipe's service runs in every guest, after sshd, with its output in the guest log.
    served = fleet.run("python3 -c \"import urllib.request,sys; "
                       "sys.stdout.write(str(len(urllib.request.urlopen("
                       "'http://127.0.0.1/16k.txt').read())))\"")
    assert served.ok and int(served[fleet.names[1]].stdout) > 16384


@pytest.mark.integration
def test_web_load_example_scenario(root: None, tmp_path: Path) -> None:
    before = snapshot()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/test_web_load.py",
         "scenarios/test_ssh_fanout.py",
         "--guests=1,3", f"--reports-dir={tmp_path}", "-p", "no:cacheprovider", "-q"],
        cwd=PROJECT, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert before.diff(snapshot()) == {}
    import pandas as pd

    run = (tmp_path / "latest").resolve()
    m = pd.read_parquet(run / "metrics.parquet")
    rate = m[m["metric"] == "wrk_request_rate"]
    # N=3: one server, two clients with wrk; N=1 has no client for its server (roles).
    assert rate.groupby("n_guests")["guest"].nunique().to_dict() == {3: 2}
    tests = {t["test"]: t for t in json.loads((run / "run.json").read_text())["tests"]}
    assert tests["test_nginx_under_wrk[n=1]"]["outcome"] == "skipped"
    assert tests["test_nginx_under_wrk[n=3]"]["outcome"] == "passed"
    assert (rate["value"] > 0).all()
    assert (m[m["metric"] == "wrk_errors"]["value"] == 0).all()
