"""The report as a reader sees it: Debian's headless Chromium driven by Playwright (the `playwright` package of
the dev extra; no Playwright browser download).

    with open_page(report / "index.html") as opened:
        opened.page.locator("#method-filter summary").click()
        assert not opened.problems()

`open_page` routes every request the page makes: a file:// one goes on, any other is aborted and recorded
(`blocked`), so a test of "no network" sees the attempts instead of a page that merely failed to load. It
records every console message (any type: the page has no reason to log), uncaught exceptions and failed
requests, and returns once report.js has drawn every figure (body[data-figures-rendered]).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FIRST_SCREEN = (1366, 768)
"""The viewport a reader opens the report in (the most common laptop screen), in px."""
RENDERED = "body[data-figures-rendered]"
"""What report.js sets once every figure is drawn (its value: the number of figures)."""
RENDER_TIMEOUT_MS = 60_000
ACTION_TIMEOUT_MS = 20_000


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


@dataclass
class Opened:
    """A page open in Chromium and what it did: `page` (playwright's Page), `requests` (every URL it asked for),
    `blocked` (the non-file:// ones, aborted), `console` ("type: text" of every console message), `errors`
    (uncaught exceptions) and `failed` (requests that failed, with the reason)."""

    page: Any
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Everything a clean page does not do: a tried network request, a console message, an uncaught
        exception, a failed request."""
        return ([f"network request: {u}" for u in self.blocked] + [f"console {c}" for c in self.console]
                + [f"page error: {e}" for e in self.errors] + [f"request failed: {f}" for f in self.failed])

    def reload(self, path: Path) -> None:
        """`path` loaded afresh in the same tab, with what was recorded so far forgotten; returns once every
        figure is drawn. By way of about:blank, so that the load is a new navigation: a reload, or a return
        through the history, would have the browser restore the form controls as the reader left them."""
        for record in (self.requests, self.blocked, self.console, self.errors, self.failed):
            record.clear()
        self.page.goto("about:blank")
        self.page.goto(Path(path).resolve().as_uri())
        _wait_for_figures(self)


@contextmanager
def launched() -> Iterator[Any]:
    """Headless Chromium (playwright's Browser), closed on exit. Playwright's sync API runs one of these per
    thread at a time: tests that hold a page open while they open another pass this to both `open_page`s."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(path: Path, width: int = FIRST_SCREEN[0], height: int = FIRST_SCREEN[1],
              browser: Any = None) -> Iterator[Opened]:
    """`path` open in headless Chromium with a width x height viewport, once every figure is drawn: in a new
    context (its own history, storage and cache) of `browser`, or of a Chromium launched for it."""
    if browser is None:
        with launched() as own, open_page(path, width, height, own) as opened:
            yield opened
        return
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        opened = Opened(page)

        def route(r) -> None:
            url = r.request.url
            opened.requests.append(url)
            if url.startswith("file:"):
                r.continue_()
            else:
                opened.blocked.append(url)
                r.abort()

        def on_console(msg) -> None:
            at = msg.location or {}
            opened.console.append(f"{msg.type}: {msg.text} ({at.get('url', '?')}:{at.get('lineNumber', '?')})")

        page.route("**/*", route)
        page.on("console", on_console)
        page.on("pageerror", lambda e: opened.errors.append(str(e)))
        page.on("requestfailed", lambda r: opened.failed.append(f"{r.url}: {r.failure}"))
        page.goto(Path(path).resolve().as_uri())
        _wait_for_figures(opened)
        yield opened
    finally:
        context.close()


def _wait_for_figures(opened: Opened) -> None:
    from playwright.sync_api import Error as PlaywrightError

    try:
        opened.page.wait_for_selector(RENDERED, state="attached", timeout=RENDER_TIMEOUT_MS)
    except PlaywrightError as e:
        raise AssertionError(f"the page did not draw its figures ({e}); it did: {opened.problems()}") from e


def with_injected(page: Path, name: str, head: str) -> Path:
    """A copy of `page` beside it (so its relative links resolve) with `head` first in its <head>."""
    copy = page.with_name(name)
    text = page.read_text(encoding="utf-8")
    assert "<head>" in text
    copy.write_text(text.replace("<head>", "<head>" + head, 1), encoding="utf-8")
    return copy
