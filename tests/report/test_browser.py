"""The report opens offline in headless Chromium: every image loads, no script error or console message,
and a screenshot is kept (pytest tmp dir and test-artifacts/report.png in the repository root).

The check is a copy of the page with a probe script first in <head>: it records image load failures,
uncaught errors and console.error calls, and on `load` writes them and the image counts into the DOM,
which `--dump-dom` prints. Console lines Chromium logs to stderr count as errors too (the report has no
script of its own, so any console output is unexpected). A page with one broken image must fail the
check (test_check_catches_a_broken_image), so the check cannot pass vacuously.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

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


def browser_check(page: Path) -> dict:
    """Load a probe-injected copy of `page` (beside it, so relative links resolve) and return what it saw:
    images, loaded, problems (image / script / console errors), injected, console (stderr console lines)."""
    probe = page.with_name(f"_probe_{page.name}")
    text = page.read_text()
    probe.write_text(text.replace("<head>", "<head>" + PROBE, 1))
    try:
        proc = subprocess.run([chromium(), *FLAGS, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                              timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    import html

    out = json.loads(html.unescape(found.group(1)))
    out["console"] = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
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
