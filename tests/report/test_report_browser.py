"""The report in a real browser (headless Chromium): it renders, every image decodes, and the
page fetches nothing. No DevTools protocol: a copy of the page with a tiny script reports what
it saw through ``document.title``, read back with ``--dump-dom``."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from report.expected import plots_called_for

from harness.report import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    # `make test` installs Debian's chromium: its absence is a broken set-up, not a skip.
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install chromium", pytrace=False)

# Collect, after load, every image's decoded size and every resource the page fetched.
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    var fig = i.closest('figure');
    return [i.complete, i.naturalWidth, i.naturalHeight, fig ? fig.id : ''];
  });
  var fetched = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  var urls = [];
  document.querySelectorAll('[src],[href]').forEach(function (el) {
    urls.push(el.getAttribute('src') || el.getAttribute('href'));
  });
  document.title = 'CHECK:' + JSON.stringify({images: images, fetched: fetched, urls: urls});
});
</script>"""


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-default-apps",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing could be fetched even if tried
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_screenshot(rendered: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = _chromium(
        tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", rendered.as_uri()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


def test_images_load_and_nothing_is_fetched(rendered: Path, tmp_path: Path) -> None:
    page = rendered.read_text(encoding="utf-8")
    # The report's CSP forbids scripts; the probe copy allows inline ones and nothing else more.
    probe_csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    )
    probe = re.sub(
        r'(<meta http-equiv="Content-Security-Policy" content=")[^"]*',
        lambda m: m.group(1) + probe_csp,
        page,
    )
    assert probe != page
    # Beside index.html so relative links resolve the same way.
    copy = rendered.with_name("browser-probe.html")
    copy.write_text(probe.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    try:
        proc = _chromium(
            tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000", copy.as_uri()
        )
    finally:
        copy.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"<title>CHECK:(.*?)</title>", proc.stdout, re.S)
    assert m, "the probe did not run: " + proc.stdout[:500]
    seen: dict[str, Any] = json.loads(html_lib.unescape(m.group(1)))
    # Every plot the data calls for was decoded by the browser, at the size of its PNG file.
    wanted = plots_called_for(rendered.parent)
    assert sorted(fig for *_, fig in seen["images"]) == sorted(f"plot-{n}" for n in wanted)
    for complete, width, height, fig in seen["images"]:
        png = (rendered.parent / "plots" / f"{fig.removeprefix('plot-')}.png").read_bytes()
        assert complete and (width, height) == _png_size(png), fig
    assert seen["fetched"] == []  # data: images are not fetches; anything else would be
    for url in seen["urls"]:
        assert not re.match(r"(?:https?:)?//", url), url


# Every figure's axes facts (data-axes, written by save_figure) and its image's decoded size.
AXES_SCRIPT = """<script>
window.addEventListener('load', function () {
  var figs = Array.prototype.map.call(document.querySelectorAll('figure'), function (f) {
    var img = f.querySelector('img');
    return {id: f.id, axes: JSON.parse(f.dataset.axes || '[]'),
            shown: img.complete && img.naturalWidth > 0};
  });
  document.title = 'AXES:' + JSON.stringify(figs);
});
</script>"""
#: Axes whose y is a list of guests, not a quantity.
CATEGORICAL_Y = re.compile(r"^guest\b")


def _probe_axes(index: Path, profile: Path) -> list[dict[str, Any]]:
    page = index.read_text(encoding="utf-8").replace(
        "style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
    copy = index.with_name("axes-probe.html")
    copy.write_text(page.replace("</body>", AXES_SCRIPT + "</body>"), encoding="utf-8")
    try:
        proc = _chromium(profile, "--dump-dom", "--virtual-time-budget=5000", copy.as_uri())
    finally:
        copy.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"<title>AXES:(.*?)</title>", proc.stdout, re.S)
    assert m, "the probe did not run: " + proc.stdout[:500]
    figs: list[dict[str, Any]] = json.loads(html_lib.unescape(m.group(1)))
    return figs


def test_every_plot_fills_its_frame_and_names_units_and_zone(
        rendered: Path, tmp_path: Path) -> None:
    """Both synthetic runs (operations back to back with faults; a saturating sweep whose
    operations start together, with agent results and resource samples), looked at in
    Chromium: a screenshot of each is kept, and every axes of every plot has data across
    most of its width, a unit on its value axis, and, on a time axis, the report's zone."""
    from report.synthsweep import make_sweep

    sweep = render_report(make_sweep(tmp_path / "sweep"))
    for name, index in (("faults", rendered), ("sweep", sweep)):
        shot = tmp_path / f"report-{name}.png"
        proc = _chromium(tmp_path / f"profile-{name}", f"--screenshot={shot}",
                         "--window-size=1280,6000", index.as_uri())
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
        print(f"screenshot of the {name} report: {shot}")
        figs = _probe_axes(index, tmp_path / f"probe-{name}")
        assert sorted(f["id"] for f in figs) == sorted(
            f"plot-{n}" for n in plots_called_for(index.parent))
        for fig in figs:
            assert fig["shown"] and fig["axes"], fig["id"]
            for ax in fig["axes"]:
                where = (fig["id"], ax)
                assert ax["artists"] > 0 and ax["fill_x"] >= 0.5, where  # not an empty frame
                assert ax["x"] and ax["y"], where
                assert re.search(r"\(.+\)", ax["y"]) or CATEGORICAL_Y.match(ax["y"]), where
                if ax["time"]:
                    assert "America/El_Salvador" in ax["x"], where
                else:
                    assert re.search(r"\(.+\)", ax["x"]), where
