"""Roles (``@pytest.mark.roles``, ``--roles``) and the helpers that collect results back:
dealing guests out, rows and inventory groups carrying the role, ``agents.gather`` (one JSON
value per guest) and ``agents.fetch`` (a result file from every guest into ``guests/``).

The spec's arithmetic is checked on its own; everything else on real netns guests, through a
scenario written in a folder outside this project, as a user's would be."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.ansible import Ansible, one_line_results
from helpers.cli import one_clear_line, scalelab
from leaks import snapshot

from harness.errors import UserError
from harness.image.cache import Image
from harness.roles import RolesDontFit, RoleSpec, UnknownRole

G = [f"g{i:03d}" for i in range(10)]


# -- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "n", "expected"), [
    ("server=1,clients=rest", 4, {"server": G[:1], "clients": G[1:4]}),
    ("server=1,clients=rest", 2, {"server": G[:1], "clients": G[1:2]}),
    ("receivers=50%,senders=rest", 5, {"receivers": G[:2], "senders": G[2:5]}),
    ("receivers=50%,senders=rest", 2, {"receivers": G[:1], "senders": G[1:2]}),
    ("db=3,web=2", 7, {"db": G[:3], "web": G[3:5]}),  # g005, g006: no role
    ("leader=1,monitor=all", 3, {"leader": G[:1], "monitor": G[:3]}),
])
def test_guests_are_dealt_out_in_order(text: str, n: int, expected: dict[str, list[str]]) -> None:
    roles = RoleSpec.parse(text).assign(G[:n])
    assert {r: list(ns) for r, ns in roles.members_of.items()} == expected
    assert roles.names == list(expected)


def test_labels_name_every_role_of_a_guest() -> None:
    roles = RoleSpec.parse("leader=1,peers=all").assign(G[:3])
    assert roles.labels() == {"g000": "leader+peers", "g001": "peers", "g002": "peers"}
    assert roles.of("g000") == ("leader", "peers")
    assert roles.restricted(["g001", "g002"]).members_of == {"leader": (),
                                                             "peers": ("g001", "g002")}
    later = RoleSpec.parse("leader=1,rest=rest").assign(["g002", "g001"])
    merged = roles.merged(later)
    assert merged.members("leader") == ("g000", "g002")
    assert merged.members("rest") == ("g001",)


def test_marker_keywords_give_the_same_spec_as_the_option() -> None:
    assert RoleSpec.of({"server": 1, "clients": "rest"}.items()) == RoleSpec.parse(
        "server=1, clients=REST")
    assert RoleSpec.parse("a=2,b=rest").minimum == 3
    assert RoleSpec.parse("a=50%,b=all").minimum == 1


@pytest.mark.parametrize(("text", "needle"), [
    ("server", "is not NAME=COUNT"),
    ("server=0", "must be at least 1"),
    ("server=-2", "must be at least 1"),
    ("server=one", "is not a count"),
    ("server=150%", "a share must be above 0 %"),
    ("server=0%", "a share must be above 0 %"),
    ("a=rest,b=rest", "only one role can take the rest"),
    ("a=1,a=2", "named twice"),
    ("1st=1", "must start with a letter"),
    ("web-server=1", "must start with a letter and hold only"),
])
def test_a_bad_spec_says_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        RoleSpec.parse(text)


def test_too_few_guests_and_unknown_roles_are_named() -> None:
    spec = RoleSpec.parse("server=1,clients=rest")
    with pytest.raises(RolesDontFit, match=r"need at least 2 guest\(s\); there are 1"):
        spec.assign(G[:1])
    with pytest.raises(RolesDontFit, match="do not fit 2"):
        RoleSpec.parse("a=100%,b=rest").assign(G[:2])
    with pytest.raises(UnknownRole, match="no role 'db' here; the roles are server, clients"):
        spec.assign(G[:3]).members("db")
    with pytest.raises(UserError, match="is not a count"):
        RoleSpec.of([("server", True)])


def test_roles_option_larger_than_the_lab_fails_before_anything(tmp_path: Path) -> None:
    before = snapshot()
    res = scalelab("up", "--guests", "2", "--roles", "server=1,clients=2",
                   f"--reports-dir={tmp_path / 'r'}")
    one_clear_line(res, "--roles=server=1,clients=2", "needs at least 3 guests")
    res = scalelab("up", "--guests", "2", "--roles", "server=x", f"--reports-dir={tmp_path}")
    one_clear_line(res, "server='x' is not a count")
    assert not (tmp_path / "r").exists()
    assert before.diff(snapshot()) == {}


BAD_MARKER = """
import pytest

@pytest.mark.roles(server=1, clients="lots")
def test_x(fleet):
    pass
"""


def test_a_bad_marker_stops_the_run_at_collection(tmp_path: Path) -> None:
    (tmp_path / "test_bad.py").write_text(BAD_MARKER)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path), "--guests=2", "-p", "no:cacheprovider",
         f"--reports-dir={tmp_path / 'r'}", f"--rootdir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == pytest.ExitCode.USAGE_ERROR, res.stdout + res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert err == ["ERROR: scalelab: test_bad.py::test_x[n=2]: @pytest.mark.roles: "
                   "clients='lots' is not a count: give a number, a share like 50%, rest or all"]
    assert not (tmp_path / "r").exists()


# -- on real guests ---------------------------------------------------------------------------

USER_SCENARIO = """
import json

import pytest

from harness.roles import UnknownRole


@pytest.mark.roles(server=1, clients="rest")
def test_roles_in_use(agents, fleet, n_guests):
    names = fleet.names
    assert fleet.role("server").names == names[:1]
    assert fleet.role("clients").names == names[1:]
    assert fleet.role("clients").role("clients").names == names[1:]
    with pytest.raises(UnknownRole):
        fleet.role("db")
    with pytest.raises(ValueError, match="not both"):
        agents.targets(names[:1], "server")

    # One JSON value per guest (the last line counts when the program logs first).
    got = agents.gather("probe", ["sh", "-c", "echo starting; python3 -c 'import json, "
                        "socket; print(json.dumps({\\"host\\": socket.gethostname()}))'"],
                        role="clients")
    assert got.ok and {g: v["host"] for g, v in got.values.items()} == {
        n: n for n in names[1:]}
    bad = agents.gather("not_json", ["echo", "hello"], role="server")
    assert not bad.ok and bad.values == {}
    assert bad.group.failed == {names[0]: "output"}

    # A result file from every client, copied back.
    agents.run("write_result", ["sh", "-c", "hostname > /tmp/result.txt"], role="clients")
    paths = agents.fetch("/tmp/result.txt", role="clients")
    assert sorted(paths) == names[1:]
    for guest, path in paths.items():
        assert path.read_text().strip() == guest
    missing = agents.fetch("/tmp/nothing-here", role="server")
    assert missing == {}
"""


@pytest.fixture
def user_run(image: Image, tmp_path: Path) -> Iterator[Path]:
    """The user's scenario, run as a sweep N=1,3 from its own folder; the run directory."""
    before = snapshot()
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / "test_mine.py").write_text(USER_SCENARIO)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(folder), "--guests=1,3", "-p", "no:cacheprovider",
         f"--reports-dir={tmp_path / 'r'}", "-q", f"--rootdir={folder}"],
        cwd=folder, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 1 skipped" in res.stdout, res.stdout
    assert before.diff(snapshot()) == {}
    yield (tmp_path / "r" / "latest").resolve()


@pytest.mark.integration
def test_roles_reach_rows_inventory_and_run_json(user_run: Path, tmp_path: Path) -> None:
    info = json.loads((user_run / "run.json").read_text())
    skipped = [t for t in info["tests"] if t["outcome"] == "skipped"]
    assert [(t["n_guests"], t["reason"]) for t in skipped] == [
        (1, "roles server=1,clients=rest need at least 2 guest(s); there are 1")]
    assert info["labs"]["default"]["roles"] == {"server": ["g000"],
                                                "clients": ["g001", "g002"]}

    t = pd.read_parquet(user_run / "timings.parquet")
    mine = t[t["scenario"] == "test_roles_in_use[n=3]"]
    by_op = mine.groupby("op")["role"].agg(lambda r: sorted(set(r)))
    assert by_op["probe"] == ["clients"] and by_op["not_json"] == ["server"]
    assert by_op["write_result"] == ["clients"] and by_op["fetch"] == ["clients", "server"]
    bad = mine[mine["op"] == "not_json"].iloc[0]
    assert not bad["ok"] and bad["error_class"] == "output"
    assert "stdout is not one JSON value" in bad["error"]
    miss = mine[(mine["op"] == "fetch") & (mine["role"] == "server")].iloc[0]
    assert miss["error"] == "/tmp/nothing-here: no such file"
    for g in ("g001", "g002"):
        kept = user_run / "guests" / g / "test_roles_in_use_n=3_" / "result.txt"
        assert kept.read_text().strip() == g

    with Ansible(tmp_path / "ansible") as ansible:
        listed = json.loads(ansible("ansible-inventory", "-i", str(user_run / "inventory.yml"),
                                    "--list").stdout)
    assert listed["role_server"]["hosts"] == ["g000"]
    assert listed["role_clients"]["hosts"] == ["g001", "g002"]


@pytest.mark.integration
def test_kept_lab_with_roles_drives_a_role_group(image: Image, tmp_path: Path) -> None:
    """``scalelab up --roles`` (a kept lab): its inventory's role group is what Ansible
    reaches; ``scalelab down`` leaves nothing."""
    before = snapshot()
    reports = tmp_path / "r"
    up = scalelab("up", "--guests", "3", "--roles", "server=1,clients=rest",
                  f"--reports-dir={reports}")
    run = (reports / "latest").resolve()
    try:
        assert up.returncode == 0, up.stderr
        assert "role server: g000" in up.stdout and "role clients: g001, g002" in up.stdout
        with Ansible(tmp_path / "ansible") as ansible:
            out = ansible("ansible", "-i", str(run / "inventory.yml"), "role_clients",
                          "-m", "ansible.builtin.command", "-a", "hostname")
        assert one_line_results(out.stdout) == {"g001": "CHANGED", "g002": "CHANGED"}, out
    finally:
        down = scalelab("down", str(run))
    assert down.returncode == 0, down.stderr
    assert before.diff(snapshot()) == {}

