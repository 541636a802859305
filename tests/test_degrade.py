"""The degrade fault: its conditions parsed at the edge, the tc/nft it makes, the report's
band, and on real netns guests loss and duplication measured against binomial bounds while
the harness's own commands keep working; delay refused here by a real probe (no sch_netem)
and measured where the kernel has it."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from helpers.cli import one_clear_line, scalelab
from helpers.probes import binomial_bounds, median_rtt, probe, ssh_rtt, start_echo
from helpers.scenarios import run_scenario
from leaks import PROJECT, snapshot
from matplotlib.figure import Figure

from harness.backends.base import FaultNotSupported
from harness.backends.netns.degrade import netem_missing
from harness.config import build_config
from harness.degrade import Degradation, Shaping, parse_spec
from harness.errors import UserError
from harness.faults import Nemesis
from harness.image.cache import Image
from harness.lab import Lab
from harness.plumbing import netem
from harness.regions import delay_matrix
from harness.report.plots.figure import time_decorations
from harness.session import Session
from harness.workloads import Agents

matplotlib.use("Agg")

# -- parsed once, at the edge -----------------------------------------------------------------


def test_conditions_parse_to_seconds_and_fractions() -> None:
    d = Degradation.parse(delay="50ms", jitter="5ms", loss="1%", duplicate="0.5%",
                          reorder="2%")
    assert d == Degradation(0.05, 0.005, 0.01, 0.005, 0.02)
    assert Degradation.parse(delay="1.5s").delay == 1.5
    assert Degradation.parse(delay="250us").delay == pytest.approx(250e-6)
    assert d.label() == "delay 50ms ±5ms, loss 1%, duplicate 0.5%, reorder 2%"
    assert d.netem_args() == ["delay", "50ms", "5ms", "loss", "1%", "duplicate", "0.5%",
                              "reorder", "2%"]
    assert not Degradation.parse(loss="3%").needs_netem and d.needs_netem


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"loss": "5 percent"}, "loss '5 percent' is not a percentage like 1%"),
    ({"loss": "-5%"}, "loss '-5%' is negative"),
    ({"duplicate": "150%"}, "duplicate '150%' is more than 100%"),
    ({"delay": "100"}, "delay '100' is not a duration like 50ms"),
    ({"delay": "-3ms"}, "delay '-3ms' is negative"),
    ({"jitter": "5ms"}, "jitter needs a delay"),
    ({"loss": "1%", "reorder": "2%"}, "reorder needs a delay"),
    ({}, "at least one of delay, loss, duplicate"),
])
def test_bad_conditions_are_one_clear_line(kwargs: dict[str, str], needle: str) -> None:
    with pytest.raises(UserError) as err:
        Degradation.parse(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_schedule_spec_and_region_matrix() -> None:
    cond, to = parse_spec("delay=100ms,jitter=10ms,to=g001+g002")
    assert cond == Degradation(0.1, 0.01) and to == ["g001", "g002"]
    assert parse_spec("loss=1%")[1] is None
    with pytest.raises(UserError, match="'lag=5ms' is not one of"):
        parse_spec("lag=5ms")
    m = delay_matrix({"eu": ["g0", "g1"], "us": ["g2"]}, between="40ms", inside="1ms")
    assert m == {("eu", "eu"): Degradation(0.001), ("eu", "us"): Degradation(0.04),
                 ("us", "eu"): Degradation(0.04), ("us", "us"): Degradation(0.001)}
    m = delay_matrix({"a": ["g0"], "b": ["g1"], "c": ["g2"]},
                     between={("a", "b"): "10ms", ("a", "c"): "20ms", ("b", "c"): "0"})
    assert m == {("a", "b"): Degradation(0.01), ("b", "a"): Degradation(0.01),
                 ("a", "c"): Degradation(0.02), ("c", "a"): Degradation(0.02)}
    with pytest.raises(UserError, match="in two regions"):
        delay_matrix({"a": ["g0"], "b": ["g0"]}, between="1ms")
    with pytest.raises(UserError, match="no delay given between regions a and c"):
        delay_matrix({"a": ["g0"], "b": ["g1"], "c": ["g2"]}, between={("a", "b"): "1ms"})


def test_netem_tree_keeps_the_control_peer_out_of_netem() -> None:
    rules = [Shaping(Degradation(0.1, 0.01), ("10.0.0.3",)),
             Shaping(Degradation(0.04), ("10.0.0.4", "10.0.0.5"))]
    script = netem.tree_script(rules, control_from_ssh=True)
    lines = script.splitlines()
    root = next(i for i, ln in enumerate(lines) if "root handle 1: prio bands 3" in ln)
    ctl = next(i for i, ln in enumerate(lines) if 'dst "$ctl"/32 flowid 1:1' in ln)
    assert root < ctl and "prio 1 u32" in lines[ctl]  # first filter, default band
    assert 'parent 1:2 handle 12: netem delay 100ms 10ms' in script
    assert 'parent 1:3 handle 13: netem delay 40ms' in script
    for addr, band in (("10.0.0.3", 2), ("10.0.0.4", 3), ("10.0.0.5", 3)):
        assert f"prio 2 u32 match ip dst {addr}/32 flowid 1:{band}" in script
    assert "priomap " + " ".join(["0"] * 16) in script  # unfiltered traffic: band 1:1
    assert netem.tree_script([], control_from_ssh=True) == netem.clear_script()
    with pytest.raises(UserError, match="at most 15"):
        netem.tree_script([Shaping(Degradation(0.001 * k), ("10.0.0.3",))
                           for k in range(1, 17)])


def test_the_band_of_a_degradation_is_labelled_with_it() -> None:
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    faults = pd.DataFrame({
        "op": ["degrade", "pause"], "guest": ["g000", "g001"],
        "start": [t0, t0], "end": [t0 + pd.Timedelta(seconds=5)] * 2,
        "error": ["loss 30% → g001", None]})
    ax = Figure().add_subplot()
    ax.set_xlim(0, 1e6)
    handles = time_decorations(ax, faults, pd.DataFrame(), t0, t0 + pd.Timedelta(seconds=9))
    assert sorted(str(h.get_label()) for h in handles) == ["fault: degrade: loss 30% → g001",
                                                      "fault: pause"]
    assert [t.get_text() for t in ax.texts] == [" degrade: loss 30% → g001"]


def test_cli_refuses_bad_conditions_before_looking_for_a_lab() -> None:
    res = scalelab("fault", "degrade", "g000", "--loss", "5 percent", "--run", "no-such-run")
    assert res.returncode == 2
    one_clear_line(res, "loss '5 percent' is not a percentage")
    res = scalelab("fault", "restore", "g000", "--delay", "5ms", "--run", "no-such-run")
    one_clear_line(res, "go with `degrade` only")


# -- on real netns guests -----------------------------------------------------------------------


@pytest.fixture
def lab3(image: Image, tmp_path: Path) -> Iterator[tuple[Session, Lab]]:
    before = snapshot()
    s = Session(build_config({"guests": "3", "reports_dir": str(tmp_path)}, PROJECT), image=image)
    lab = s.lab_up(3)
    try:
        yield s, lab
    finally:
        s.finish(render=True)
        assert before.diff(snapshot()) == {}
        assert not _degrade_tables()


def _degrade_tables() -> list[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                         check=True).stdout
    return [ln for ln in out.splitlines() if ln.startswith("table netdev sld-")]


@pytest.mark.integration
def test_netns_loss_and_duplication_between_two_guests(lab3: tuple[Session, Lab]) -> None:
    """Loss 30 % from g000 to g001: 500 probes lose a binomial share, the host's commands
    to both meanwhile all succeed, g000 → g002 loses nothing; restore: no loss. The same
    for duplication 20 %.  The rows carry the parameters; the report draws them."""
    s, lab = lab3
    fleet = lab.require_fleet()
    rec = s.recorder("degrade", 3)
    agents = Agents(fleet, rec)
    g0, g1, g2 = fleet.names
    start_echo(agents, g1)
    agents.serve("netprobe-echo2", ["python3", "/opt/scalelab/agents/netprobe.py", "echo",
                                    "9077"], names=[g2])
    assert probe(fleet, g0, g1).lost == 0  # a quiet bridge: nothing lost before
    nem = Nemesis(lab.backend, rec, fleet)
    harness_ok: list[bool] = []
    stop = threading.Event()

    def harness_commands() -> None:  # the harness's own traffic, all through the fault
        while not stop.is_set():
            harness_ok.append(fleet.run("true", names=[g1, g0], timeout=10).ok)
            stop.wait(0.05)

    with nem.degraded([g0], loss="30%", to=[g1]):
        assert len(_degrade_tables()) == 1
        th = threading.Thread(target=harness_commands)
        th.start()
        lossy = probe(fleet, g0, g1)
        other = probe(fleet, g0, g2, count=200)
        stop.set()
        th.join(30)
    lo, hi = binomial_bounds(500, 0.3)
    print(f"loss 30%: {lossy.lost}/500 lost (4σ bounds {lo:.0f}..{hi:.0f}); to g002: "
          f"{other.lost}/200; {len(harness_ok)} harness fan-outs, all ok: {all(harness_ok)}")
    assert lo <= lossy.lost <= hi, (lossy, lo, hi)
    assert lossy.duplicates == 0 and other.lost == 0
    assert len(harness_ok) >= 3 and all(harness_ok), harness_ok
    assert not _degrade_tables()
    assert probe(fleet, g0, g1).lost == 0  # restored
    with nem.degraded([g0], duplicate="20%", to=[g1]):
        dup = probe(fleet, g0, g1)
    lo, hi = binomial_bounds(500, 0.2)
    print(f"duplicate 20%: {dup.duplicates}/500 duplicated (4σ bounds {lo:.0f}..{hi:.0f})")
    assert lo <= dup.duplicates <= hi and dup.lost == 0, (dup, lo, hi)
    assert probe(fleet, g0, g1).duplicates == 0
    rows = rec.timings()
    bands = rows[(rows["phase"] == "fault") & (rows["op"] == "degrade")]
    assert list(bands["error"]) == ["loss 30% → g001", "duplicate 20% → g001"]
    assert list(bands["guest"]) == [g0, g0]
    with nem.degraded([g0], loss="100%", to=[g1]):  # every packet: no numgen at all
        assert probe(fleet, g0, g1, count=100).lost == 100
        assert fleet.run("true", names=[g0, g1], timeout=10).ok
    assert probe(fleet, g0, g1).lost == 0


@pytest.mark.integration
def test_netns_delay_needs_sch_netem(lab3: tuple[Session, Lab]) -> None:
    """Delay on netns: refused naming sch_netem when the probe (the real tree on a
    throw-away namespace) fails, with nothing changed; where the kernel has netem, the same
    test measures a 100 ms delay from g000 to g001 (that branch cannot run on this host)."""
    s, lab = lab3
    fleet = lab.require_fleet()
    rec = s.recorder("degrade-delay", 3)
    g0, g1, _ = fleet.names
    nem = Nemesis(lab.backend, rec, fleet)
    if netem_missing() is not None:
        with pytest.raises(FaultNotSupported, match="sch_netem"), \
                nem.degraded([g0], delay="100ms", loss="5%", to=[g1]):
            pass
        assert not _degrade_tables()  # the loss part was not applied either
        assert nem.shaping == {} or all(not v for v in nem.shaping.values())
        assert rec.timings().query("phase == 'fault'").empty
        return
    start_echo(Agents(fleet, rec), g1)
    before, ssh0 = median_rtt(fleet, g0, g1), ssh_rtt(fleet, g0)
    with nem.degraded([g0], delay="100ms", jitter="10ms", to=[g1]):
        during, ssh1 = median_rtt(fleet, g0, g1), ssh_rtt(fleet, g0)
    after = median_rtt(fleet, g0, g1)
    assert during >= before + 90, (before, during)
    assert ssh1 < ssh0 + 0.05  # the harness's own SSH to the delayed guest is not delayed
    assert after < before + 20, (before, after)


@pytest.mark.integration
def test_schedule_degrades_for_its_window(lab3: tuple[Session, Lab]) -> None:
    s, lab = lab3
    fleet = lab.require_fleet()
    rec = s.recorder("degrade-schedule", 3)
    g0, g1, g2 = fleet.names
    nem = Nemesis(lab.backend, rec, fleet)
    with pytest.raises(UserError, match="not a percentage"):
        nem.schedule([(0.0, "degrade:loss=lots", [g0], 1.0)])  # checked before it starts
    thread = nem.schedule([(0.2, f"degrade:loss=10%,duplicate=1%,to={g1}+{g2}", [g0], 1.5)])
    seen = []
    while thread.is_alive():
        seen.append(len(_degrade_tables()))
        threading.Event().wait(0.1)
    thread.join(5)
    assert max(seen) == 1 and not _degrade_tables()
    rows = rec.timings()
    (band,) = rows[(rows["phase"] == "fault") & (rows["op"] == "degrade")].to_dict("records")
    assert band["guest"] == g0 and band["error"] == "loss 10%, duplicate 1% → g001, g002"
    assert float(band["duration_s"]) >= 1.5


@pytest.mark.integration
def test_cli_degrade_restore_and_down_on_a_kept_lab(image: Image, tmp_path: Path) -> None:
    before = snapshot()
    reports = tmp_path / "reports"
    up = scalelab("up", "--guests", "3", "--reports-dir", str(reports))
    assert up.returncode == 0, up.stderr
    run_dir = (reports / "latest").resolve()
    run = run_dir.name
    try:
        res = scalelab("fault", "degrade", "g000", "--loss", "150%", "--run", run)
        one_clear_line(res, "loss '150%' is more than 100%")
        res = scalelab("fault", "degrade", "g000", "--delay", "100ms", "--run", run)
        if netem_missing() is not None:
            one_clear_line(res, "sch_netem")
        else:
            assert res.returncode == 0, res.stderr
        assert scalelab("fault", "restore", "g000", "--run", run).returncode == 0
        assert not _degrade_tables()
        res = scalelab("fault", "degrade", "g000", "g001", "--loss", "5%", "--duplicate", "1%",
                       "--to", "g002", "--run", run)
        assert res.returncode == 0, res.stderr
        assert "loss 5%, duplicate 1% → g002" in res.stdout
        assert len(_degrade_tables()) == 2
        assert scalelab("fault", "restore", "g000", "--run", run).returncode == 0
        assert len(_degrade_tables()) == 1  # g001's is still there...
        (netns,) = [n.split()[0] for n in before.diff(snapshot())["netns"]
                    if n.split()[0].endswith("-g000")]
        qdiscs = subprocess.run(["ip", "netns", "exec", netns, "tc", "qdisc", "show"],
                                capture_output=True, text=True, check=True).stdout
        assert "netem" not in qdiscs and "htb" not in qdiscs, qdiscs
    finally:
        assert scalelab("down", run).returncode == 0
    assert not _degrade_tables()  # ...until the lab went down
    assert before.diff(snapshot()) == {}
    rows = pd.read_json(run_dir / "timings.jsonl", lines=True)
    bands = rows[(rows["phase"] == "fault") & (rows["op"] == "degrade")]
    # g000's recorded at its restore, g001's (never restored) when the lab went down.
    assert list(bands["guest"]) == ["g000", "g001"]
    assert list(bands["error"]) == ["loss 5%, duplicate 1% → g002"] * 2


BAND_SCENARIO = """
from harness.workloads import roundtrip

def test_under_loss(fleet, recorder, nemesis):
    roundtrip(fleet, recorder, rounds=2)
    with nemesis.degraded(["g000"], loss="10%", duplicate="1%", to=["g001"]):
        roundtrip(fleet, recorder, rounds=3)
    roundtrip(fleet, recorder, rounds=2)
"""


@pytest.mark.integration
def test_report_draws_the_band_with_its_parameters(image: Image, tmp_path: Path) -> None:
    """A scenario through pytest: every plot over time that spans the degradation shows its
    band, and its legend names the parameters."""
    before = snapshot()
    plots = run_scenario(tmp_path, "test_band.py", BAND_SCENARIO, guests=2) / "plots"
    assert before.diff(snapshot()) == {} and not _degrade_tables()
    legend = "<!-- fault: degrade: loss 10%, duplicate 1% → g001 -->"
    inside = "<!--  degrade: loss 10%, duplicate 1% → g001 -->"  # the band's own label
    svgs = {p.name: p.read_text() for p in plots.glob("*.svg")}
    print("plots with the band named:", sorted(n for n, t in svgs.items() if inside in t))
    # Every plot over time spanning it: the scenario's timeline, the run's resources.
    for name in ("test_under_loss-timeline.svg", "resources-host.svg"):
        assert inside in svgs[name], name
    assert legend in svgs["test_under_loss-timeline.svg"]
