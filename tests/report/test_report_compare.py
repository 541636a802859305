"""compare_runs on synthetic runs: a doubled latency is flagged, noise-sized changes are not."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from synthruns import RunSpec

from harness.errors import UserError
from harness.report import CompareResult, compare_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four runs of the same sweep, differing only in how slow every operation is."""
    from synthruns import make_run

    root = tmp_path_factory.mktemp("compare")
    specs = {"base": 1.0, "slower": 2.0, "noise": 1.05, "faster": 0.5}
    return {
        name: make_run(root / name, RunSpec(run_id=f"run-{name}", latency_factor=factor))
        for name, factor in specs.items()
    }


def test_doubled_latency_is_flagged(runs: dict[str, Path], tmp_path: Path) -> None:
    result = compare_runs(runs["base"], runs["slower"], tmp_path)
    assert isinstance(result, CompareResult) and not result.ok
    flagged = {(r.scenario, r.n_guests, r.metric) for r in result.regressions}
    for n in (2, 4, 8):
        assert ("test_ssh_roundtrip", n, "p50") in flagged
        assert ("test_ssh_roundtrip", n, "throughput") in flagged
    p50 = [r for r in result.regressions if r.metric == "p50"]
    assert all(r.change == pytest.approx(1.0, abs=0.02) for r in p50)  # +100 %
    assert len(result.rows) == 3 and all(row.presence == "both" for row in result.rows)
    assert "WORSE" in result.text and "regression(s) beyond 10%" in result.text


def test_small_change_and_improvement_are_not_flagged(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    noise = compare_runs(runs["base"], runs["noise"], tmp_path / "noise")
    assert noise.ok and noise.regressions == []
    assert all(row.change["p50"] == pytest.approx(0.05, abs=0.01) for row in noise.rows)
    assert "no regression beyond 10%" in noise.text
    better = compare_runs(runs["base"], runs["faster"], tmp_path / "faster")
    assert better.ok


def test_threshold_is_respected(runs: dict[str, Path], tmp_path: Path) -> None:
    strict = compare_runs(runs["base"], runs["noise"], tmp_path, threshold=0.02)
    assert {r.metric for r in strict.regressions} >= {"p50", "p95"}


def test_outputs_written(runs: dict[str, Path], tmp_path: Path) -> None:
    result = compare_runs(runs["base"], runs["slower"], tmp_path / "out")
    assert result.html_path == tmp_path / "out" / "compare.html"
    assert (tmp_path / "out" / "compare.txt").read_text() == result.text
    html = result.html_path.read_text()
    assert "run-base" in html and "run-slower" in html
    assert html.count('<td class="num bad">') == 9  # p50, p95 and throughput at 3 N
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    for src in re.findall(r'<img src="([^"]+)"', html):
        assert src.startswith("data:image/png;base64,")


def test_bad_inputs_are_user_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        compare_runs(tmp_path / "missing", runs["base"], tmp_path)
    with pytest.raises(UserError, match="threshold"):
        compare_runs(runs["base"], runs["base"], tmp_path, threshold=-1)


def test_scenario_only_in_one_run(
    synth_run: Callable[..., Path], runs: dict[str, Path], tmp_path: Path
) -> None:
    other = synth_run(tmp_path / "other", RunSpec(scenario="test_cpu", op="cpu", ns=(2,)))
    result = compare_runs(runs["base"], other, tmp_path / "out")
    assert result.ok  # nothing comparable got worse
    assert {row.presence for row in result.rows} == {"only in A", "only in B"}
