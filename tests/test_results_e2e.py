"""A user's own scenario, in a folder of theirs outside this project, run as a sweep on real
netns guests: the report shows their agent's metric summed per N, in a table and a plot
against N — no headline marker, no help from the project's scenarios."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from leaks import snapshot

from harness.image.cache import Image

pytestmark = pytest.mark.integration

SCENARIO = '''
from pathlib import Path

import pytest

from harness.quorum import check_quorum

HERE = Path(__file__).parent


def test_my_service(agents, quorum):
    remote = agents.deploy(HERE / "my_agent.py")
    group = agents.run("my_agent", ["python3", remote])
    check_quorum(group, quorum)


@pytest.mark.headline("jobs_per_s")
def test_my_declared_service(agents, quorum):
    remote = agents.deploy(HERE / "my_agent.py")
    check_quorum(agents.run("my_agent", ["python3", remote]), quorum)


def test_my_named_service(agents, recorder, quorum):
    recorder.headline("job_seconds")  # the call does what the marker does
    remote = agents.deploy(HERE / "my_agent.py")
    check_quorum(agents.run("my_agent", ["python3", remote]), quorum)
'''

# The user's agent: JSON metric lines on stdout, anything else is its log.
AGENT = '''
import json
import socket
import time

t0 = time.perf_counter()
sum(i * i for i in range(20000))
print(json.dumps({"metric": "jobs_per_s", "value": 25.0, "unit": "jobs/s"}))
print(json.dumps({"metric": "job_seconds", "value": time.perf_counter() - t0, "unit": "s"}))
print("worked on", socket.gethostname())
'''


def test_user_scenario_sweep_reports_metric_per_n(image: Image, tmp_path: Path) -> None:
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "test_mine.py").write_text(textwrap.dedent(SCENARIO))
    (mine / "my_agent.py").write_text(textwrap.dedent(AGENT))
    reports = tmp_path / "reports"
    before = snapshot()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(mine), "--guests=1,2", f"--reports-dir={reports}",
         "--report-tz=UTC", "-p", "no:cacheprovider", "-q"],
        cwd=mine, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert before.diff(snapshot()) == {}
    run = (reports / "latest").resolve()
    metrics = pd.read_parquet(run / "metrics.parquet")
    jobs = metrics[metrics["metric"] == "jobs_per_s"]
    assert jobs.groupby("n_guests")["guest"].nunique().to_dict() == {1: 1, 2: 2}

    html = (run / "index.html").read_text()
    results = html.split('<section id="results">', 1)[1].split('<section id="scenarios">')[0]
    results = results.split('id="r-test_my_service"', 1)[1].split('<section class="result"')[0]
    rows = re.findall(r"<tr><td>jobs_per_s</td><td>sum over guests</td>"
                      r'<td class="num">(\d+)</td><td class="num">\d+</td>\s*'
                      r'<td class="num">([^<]+)</td>', results)
    # Summed over the guests at each N: 25 jobs/s from one guest, 50 from two.
    assert rows == [("1", "25 jobs/s"), ("2", "50 jobs/s")], results[:3000]
    plot = "result-test_my_service-jobs_per_s"
    assert f'id="plot-{plot}"' in results and "jobs_per_s against N" in results
    assert (run / "plots" / f"{plot}.png").stat().st_size > 10_000
    # No headline marker: the harness operation is the scenario's headline in the summary.
    summary = html.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    heads = dict(re.findall(r'<a href="#r-([^"]+)">.*?</a></td>\s*<td>(.*?)</td>', summary, re.S))
    assert "my_agent throughput" in heads["test_my_service"], heads
    assert "harness operation" in heads["test_my_service"]
    # The marked one's headline is its metric, summed per N (the plugin put it in run.json).
    assert heads["test_my_declared_service"].startswith("jobs_per_s"), heads
    info = json.loads((run / "run.json").read_text())
    assert {t["test"]: t["headline"] for t in info["tests"]} == {
        "test_my_service[n=1]": None, "test_my_service[n=2]": None,
        "test_my_declared_service[n=1]": "jobs_per_s",
        "test_my_declared_service[n=2]": "jobs_per_s",
        "test_my_named_service[n=1]": "job_seconds", "test_my_named_service[n=2]": "job_seconds"}
    assert heads["test_my_named_service"].startswith("job_seconds"), heads
    row = summary.split('href="#r-test_my_declared_service"', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'<td class="num">([^<]+)</td>', row) == ["25 jobs/s", "50 jobs/s"]
