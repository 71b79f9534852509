"""The report opens offline in headless Chromium: every image loads, no script error or console message,
and a screenshot is kept (pytest tmp dir and test-artifacts/report.png in the repository root).

The check is a copy of the page with a probe script first in <head>: it records image load failures,
uncaught errors and console.error calls, and on `load` writes them and the image counts into the DOM,
which `--dump-dom` prints. Console lines Chromium logs to stderr count as errors too (the report has no
script of its own, so any console output is unexpected). A page with one broken image must fail the
check (test_check_catches_a_broken_image), so the check cannot pass vacuously. A second probe writes where
the summary block lies in a 1280x900 viewport, and that first screen is kept too
(test-artifacts/report-first-screen.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lowrank_lens.findings.claims import claim_texts

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "test-artifacts" / "report.png"
PROBE = """<script>
window.__problems = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__problems.push(t && t.tagName === 'IMG' ? 'image failed: ' + t.getAttribute('src') : 'error: ' + e.message);
}, true);
var __err = console.error;
console.error = function () { window.__problems.push('console.error: ' + Array.from(arguments).join(' '));
  __err.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.from(document.images), ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  imgs.forEach(function (i) {
    if (!(i.complete && i.naturalWidth > 0)) window.__problems.push('not loaded: ' + i.getAttribute('src'));
  });
  var pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify({images: imgs.length, loaded: ok.length, problems: window.__problems,
                                    injected: window.__injected || 0});
  document.body.appendChild(pre);
});
</script>"""
GEOMETRY = """<script>
window.addEventListener('load', function () {
  var box = function (e) { if (!e) return null; var b = e.getBoundingClientRect();
    return {top: b.top, bottom: b.bottom, left: b.left, right: b.right}; };
  var s = document.getElementById('summary'), t = document.getElementById('verdicts');
  var u = document.getElementById('setup-distance');
  var pre = document.createElement('pre');
  pre.id = '__geometry';
  pre.textContent = JSON.stringify({width: window.innerWidth, height: window.innerHeight, summary: box(s),
    verdicts: box(t), contains: !!(s && t && s.contains(t)), rows: t ? t.tBodies[0].rows.length : 0,
    setup: box(u), setup_text: u ? u.textContent : ''});
  document.body.appendChild(pre);
});
</script>"""
FIRST_SCREEN = (1280, 900)
"""The viewport a reader opens the report in (a laptop browser window), in px."""
SCREEN_ARTIFACT = REPO / "test-artifacts" / "report-first-screen.png"
FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--virtual-time-budget=15000",
         "--enable-logging=stderr", "--v=0"]


def chromium() -> str:
    """The Chromium binary; installed with apt-get when missing and running as root, else a clear failure."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, timeout=1200)
        if path := shutil.which("chromium"):
            return path
    pytest.fail("headless Chromium is needed to test the report: install it (Debian: apt-get install -y chromium)")


def _probed(page: Path, script: str, pre_id: str, flags: list[str]) -> tuple[dict, str]:
    """Load a copy of `page` with `script` first in <head> (beside it, so relative links resolve); the JSON
    the script wrote into <pre id=pre_id>, and Chromium's stderr."""
    probe = page.with_name(f"_probe_{page.name}")
    text = page.read_text()
    probe.write_text(text.replace("<head>", "<head>" + script, 1))
    try:
        proc = subprocess.run([chromium(), *FLAGS, *flags, "--dump-dom", probe.as_uri()], capture_output=True,
                              text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(rf'<pre id="{pre_id}">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1))), proc.stderr


def browser_check(page: Path) -> dict:
    """Load a probe-injected copy of `page` and return what it saw: images, loaded, problems (image /
    script / console errors), injected, console (stderr console lines)."""
    out, stderr = _probed(page, PROBE, "__probe", [])
    out["console"] = [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return out


def first_screen(page: Path) -> dict:
    """Where the summary block and its verdict table lie in a FIRST_SCREEN viewport, as a reader opening the
    page sees it: viewport width/height, and the boxes (top, bottom) of #summary and #verdicts."""
    width, height = FIRST_SCREEN
    out, _ = _probed(page, GEOMETRY, "__geometry", [f"--window-size={width},{height}"])
    return out


def assert_clean(seen: dict) -> None:
    assert seen["images"] > 0
    assert seen["loaded"] == seen["images"] and not seen["problems"], seen["problems"]
    assert not seen["console"], seen["console"]
    assert seen["injected"] == 0, "escaped text ran as a script"


def test_report_opens_in_chromium_without_errors(report_page: Path, tmp_path: Path):
    assert_clean(browser_check(report_page))
    shot = tmp_path / "report.png"
    proc = subprocess.run([chromium(), *FLAGS, f"--screenshot={shot}", "--window-size=1200,3000",
                           report_page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)


def test_first_screen_shows_the_findings(report_page: Path, tmp_path: Path):
    """The page opens on its summary: in a 1280x900 viewport the summary block starts on screen and holds
    the whole verdict table (one row per claim) and the setup's distance from the paper's protocol; the
    screenshot of that screen is kept."""
    seen = first_screen(report_page)
    width, height = FIRST_SCREEN
    assert seen["width"] == width and abs(seen["height"] - height) < 100, seen  # the viewport is the asked one
    summary, verdicts = seen["summary"], seen["verdicts"]
    assert summary and verdicts and seen["contains"], seen
    assert 0 <= summary["top"] < height / 4, f"the summary starts below the first quarter of the screen: {seen}"
    assert verdicts["bottom"] <= seen["height"], f"the verdict table runs past the first screen: {seen}"
    assert seen["rows"] == len(claim_texts()), seen
    # Beside the verdicts, the setup's distance from the paper's protocol (findings/setup.py), on screen too.
    setup = seen["setup"]
    assert setup and summary["top"] <= setup["top"] and setup["bottom"] <= seen["height"], seen
    assert "tokens/parameter" in seen["setup_text"] and "The paper: 58M-368M" in seen["setup_text"], seen
    shot = tmp_path / "first-screen.png"
    proc = subprocess.run([chromium(), *FLAGS, f"--screenshot={shot}", f"--window-size={width},{height}",
                           report_page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    SCREEN_ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREEN_ARTIFACT)


def test_check_catches_a_broken_image(report_page: Path):
    broken = report_page.with_name("broken.html")
    text = report_page.read_text()
    first = re.search(r'<img src="([^"]+)"', text).group(1)
    broken.write_text(text.replace(f'<img src="{first}"', '<img src="figures/no-such-figure.png"', 1))
    try:
        seen = browser_check(broken)
    finally:
        broken.unlink()
    assert seen["loaded"] == seen["images"] - 1
    assert any("no-such-figure.png" in p for p in seen["problems"])
    with pytest.raises(AssertionError):
        assert_clean(seen)
