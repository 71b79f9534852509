"""The report in real headless Chromium (Debian's, driven by Playwright: tests/lens_browser.py), as a reader
sees it: it opens with no console message, no uncaught exception and no network request (every request is
routed; anything but file:// is aborted and recorded); every figure is drawn; a legend click, the method
filter and a view selector change what is drawn; and the first screen at 1366 x 768 holds the verdict table,
for the six-method tiny study and for a study of the `zoo` preset's 14 (or more) methods, whose first screen
is the README's screenshot (docs/report-first-screen.png).

Checks that could pass vacuously are shown to fail: a copy of the page that loads a script from a CDN is
recorded as a network attempt, and one that logs or throws shows in the console or error list.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from lens_browser import FIRST_SCREEN, Opened, launched, open_page, with_injected
from lens_testutil import require_package

from lowrank_lens.findings.claims import claim_texts
from lowrank_lens.report.interactive import ASSETS, PLOTLY_JS, SCRIPT
from lowrank_lens.study.presets import zoo

require_package("playwright", "pip install -e '.[dev]'", module_level=True)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
README_SCREENSHOT = REPO / "docs" / "report-first-screen.png"
UPDATE_SCREENSHOT = "LOWRANK_LENS_UPDATE_SCREENSHOT"
"""Set to 1 to write the README's screenshot from this test (test-artifacts/ always gets a copy)."""
"""The zoo study's first screen, shown in the README: written by test_zoo_first_screen_holds_the_verdicts
when its checks pass."""
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)
"""A reference the browser would fetch over the network: a scheme with an authority (http://, https://, ...) or
protocol-relative (//host/...). file:// is allowed by the test (the page's own assets are relative)."""

FIGURES_JS = """() => Array.from(document.querySelectorAll('figure.ifig')).map(f => {
  const d = f.querySelector('.js-plotly-plot');
  return {id: f.id, rendered: f.getAttribute('data-rendered'), plot: !!d,
    drawn: d ? d.querySelectorAll('g.trace, g.hm').length : 0,
    traces: d && d.data ? d.data.map(t => { const m = t.meta || {};
      return {methods: m.methods || (m.method ? [m.method] : []), view: m.view || '', group: t.legendgroup || '',
              visible: t.visible === undefined ? true : t.visible}; }) : [],
    legend: f.querySelectorAll('.legend .traces').length,
    views: Array.from(f.querySelectorAll('select.view option')).map(o => o.value),
    view: d ? d.getAttribute('data-view') : null};
})"""
"""Per figure: its id, data-rendered, whether Plotly drew into it, how many traces are drawn (a scatter or bar
trace is a <g class="trace">, a heatmap a <g class="hm">: a hidden or legend-only trace is not drawn), its
traces' methods (a pair's two), view, legend group and visibility, its legend entries, its view options and the
view shown."""
FIRST_SCREEN_JS = """() => {
  const box = e => { if (!e) return null; const b = e.getBoundingClientRect();
    return {top: b.top, bottom: b.bottom, left: b.left, right: b.right}; };
  const s = document.getElementById('summary'), t = document.getElementById('verdicts');
  const u = document.getElementById('setup-distance');
  return {width: window.innerWidth, height: window.innerHeight, scroll: window.scrollY, summary: box(s),
    verdicts: box(t), contains: !!(s && t && s.contains(t)), rows: t ? t.tBodies[0].rows.length : 0,
    setup: box(u), setup_text: u ? u.textContent : ''};
}"""
"""Where the summary block, its verdict table and the setup's distance lie in the viewport (layout boxes)."""
TRACES_JS = ("Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(d => d.data.map(t => "
             "({methods: (t.meta || {}).methods || [], visible: t.visible})))")
"""Every trace on the page: its methods and visibility (a JS expression)."""
IMAGES_JS = """() => Array.from(document.images).map(i => ({src: i.getAttribute('src'),
  loaded: i.complete && i.naturalWidth > 0}))"""


class _PageRefs(HTMLParser):
    """The interactive figures (<figure class="ifig">) and what the page would load (script/img/... src,
    <link href>) in an HTML file's text."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "embed": "src", "source": "src", "audio": "src",
             "video": "src", "link": "href", "object": "data"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: list[str] = []
        self.loads: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and "ifig" in (a.get("class") or "").split():
            self.figures.append(a.get("id") or "")
        if (key := self.LOADS.get(tag)) and a.get(key):
            self.loads.append(a[key])


def figures(opened: Opened) -> list[dict[str, Any]]:
    return opened.page.evaluate(FIGURES_JS)


def figure(opened: Opened, fid: str) -> dict[str, Any]:
    return next(f for f in figures(opened) if f["id"] == fid)


def shown(f: dict[str, Any]) -> int:
    """How many of the figure's traces Plotly should draw (visible === true)."""
    return sum(t["visible"] is True for t in f["traces"])


def assert_clean(opened: Opened, page: Path) -> dict[str, Any]:
    """`page` (open in `opened`, not yet touched) as a reader first sees it: nothing remote linked, no console
    message, exception or network request (only file:// ones, the page's own assets among them), no escaped
    text run as a script, every figure of the HTML file drawn with each visible trace drawn, every image
    loaded. Returns what was counted (figures, images, requests)."""
    refs = _PageRefs(page.read_text(encoding="utf-8"))
    assert not [u for u in refs.loads if REMOTE.match(u)], f"the page links remote resources: {refs.loads}"
    assert refs.figures and len(set(refs.figures)) == len(refs.figures), refs.figures  # ids unique
    assert not opened.problems(), opened.problems()
    assert all(u.startswith("file:") for u in opened.requests), opened.requests
    for asset in (PLOTLY_JS, SCRIPT):
        assert any(u.endswith(f"/{ASSETS}/{asset}") for u in opened.requests), (asset, opened.requests)
    assert opened.page.evaluate("() => window.__injected === undefined"), "escaped text ran as a script"
    body = opened.page.get_attribute("body", "data-figures-rendered")
    figs = figures(opened)
    images = opened.page.evaluate(IMAGES_JS)
    assert int(body) == len(refs.figures) == len(figs), (body, len(refs.figures), len(figs))
    assert [f["id"] for f in figs] == refs.figures
    for f in figs:
        assert f["rendered"] == "1" and f["plot"], f"figure {f['id']} not drawn: {f}"
        assert f["drawn"] > 0, f"figure {f['id']} draws no trace: {f}"
        assert f["drawn"] == shown(f), f"figure {f['id']}: {f['drawn']} traces drawn, {shown(f)} visible"
    assert all(i["loaded"] for i in images), [i["src"] for i in images if not i["loaded"]]
    return {"figures": len(figs), "images": len(images), "requests": len(opened.requests)}


def first_screen(opened: Opened) -> dict[str, Any]:
    return opened.page.evaluate(FIRST_SCREEN_JS)


def assert_first_screen_holds_the_verdicts(seen: dict[str, Any]) -> None:
    """The page opens on its findings: the summary starts in the first quarter of the screen and holds the whole
    verdict table (one row per claim) and the setup's distance from the paper's protocol, all on screen."""
    width, height = FIRST_SCREEN
    assert seen["width"] == width and seen["height"] == height and seen["scroll"] == 0, seen
    summary, verdicts, setup = seen["summary"], seen["verdicts"], seen["setup"]
    assert summary and verdicts and seen["contains"], seen
    assert 0 <= summary["top"] < height / 4, f"the summary starts below the first quarter of the screen: {seen}"
    assert 0 <= verdicts["top"] and verdicts["bottom"] <= height, f"the verdict table is not all on screen: {seen}"
    assert verdicts["left"] >= 0 and verdicts["right"] <= width, f"the verdict table is wider than the screen: {seen}"
    assert seen["rows"] == len(claim_texts()), seen
    assert setup and summary["top"] <= setup["top"] and setup["bottom"] <= height, seen
    assert "tokens/parameter" in seen["setup_text"] and "The paper: 58M-368M" in seen["setup_text"], seen


def keep_artifact(shot: Path, name: str) -> None:
    """A copy in test-artifacts/ (git-ignored) to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)


STATE_JS = ("() => ({boxes: Array.from(document.querySelectorAll('#method-filter input[type=checkbox]'))"
            ".map(b => b.checked), views: Array.from(document.querySelectorAll('select.view')).map(s => s.value)})")
"""What a reader can change on the page besides the figures' traces: the method filter's boxes and each view
selector's choice."""


def page_state(opened: Opened) -> dict[str, Any]:
    return {"figures": figures(opened), **opened.page.evaluate(STATE_JS)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module (playwright's sync API allows one per thread at a time, and the shared page
    below stays open while other tests open theirs)."""
    with launched() as b:
        yield b


@pytest.fixture(scope="module")
def shared_page(report_page: Path, browser: Any) -> Iterator[tuple[Opened, dict[str, Any]]]:
    """The tiny study's page open in Chromium once for this module's tests, and its state as first drawn.
    Drawing its dozens of figures is most of what a test here costs, and each test but the last leaves the page
    as it found it (a legend entry clicked twice, a method unticked and ticked again)."""
    with open_page(report_page, browser=browser) as opened:
        yield opened, page_state(opened)


@pytest.fixture
def opened(shared_page: tuple[Opened, dict[str, Any]], report_page: Path) -> Opened:
    """The shared page as a reader first sees it: scrolled to the top with the method filter shut, and loaded
    afresh when the test before left a control changed or recorded a problem (so a failure does not carry
    over). What it recorded (requests, console, errors) is from its last load."""
    opened, first = shared_page
    opened.page.evaluate("() => { document.getElementById('method-filter').open = false; window.scrollTo(0, 0); }")
    if opened.problems() or page_state(opened) != first:
        opened.reload(report_page)
        assert page_state(opened) == first, "a fresh load of the page does not draw what its first load drew"
    return opened


# --------------------------------------------------------------------------- opening


def test_report_opens_clean_in_chromium(opened: Opened, report_page: Path, tmp_path: Path):
    """No console message, exception or network request; every figure drawn, each visible trace drawn; every
    image loaded; nothing remote linked. At 1366 x 768 the page opens on its summary: the whole verdict table
    (one row per claim) and the setup's distance from the paper's protocol are on screen (the DOM's layout
    boxes). Kept to look at: test-artifacts/report-first-screen.png and report.png (the top of the page)."""
    counted = assert_clean(opened, report_page)
    seen = first_screen(opened)
    opened.page.screenshot(path=tmp_path / "first-screen.png")
    # the top of the page: as tall as a few screens (the whole page is long)
    opened.page.screenshot(path=tmp_path / "report.png", full_page=True,
                          clip={"x": 0, "y": 0, "width": FIRST_SCREEN[0], "height": 3000})
    assert counted["figures"] > 20, counted  # the tiny study has every metric: dozens of figures
    assert_first_screen_holds_the_verdicts(seen)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    keep_artifact(tmp_path / "report.png", "report.png")
    keep_artifact(tmp_path / "first-screen.png", "report-first-screen.png")


CDN = "https://cdn.example.invalid/x.js"
FAULTS = {"network request: ": CDN, "console error: ": "deliberate x", "console log: ": "deliberate y",
          "page error: ": "deliberate z"}
"""What a bad copy of the page does (test_the_checks_see_a_bad_page), and the problem each must show as."""


def test_the_checks_see_a_bad_page(report_page: Path, browser: Any):
    """A copy of the page that loads a script from a CDN, logs an error, logs a line and throws is caught on
    each count, so the clean checks above cannot pass by seeing nothing; the CDN request was tried (and
    aborted), not merely absent."""
    bad = with_injected(report_page, "_bad.html", f'<script src="{CDN}"></script>'
                        "<script>console.error('deliberate x'); console.log('deliberate y');</script>"
                        "<script>throw new Error('deliberate z')</script>")
    try:
        with open_page(bad, browser=browser) as opened:
            problems, blocked = opened.problems(), list(opened.blocked)
            drawn = opened.page.get_attribute("body", "data-figures-rendered")
            with pytest.raises(AssertionError):
                assert_clean(opened, bad)
        refs = _PageRefs(bad.read_text(encoding="utf-8"))
    finally:
        bad.unlink()
    for kind, needle in FAULTS.items():
        assert any(p.startswith(kind) and needle in p for p in problems), (kind, needle, problems)
    assert blocked == [CDN], blocked
    assert [u for u in refs.loads if REMOTE.match(u)] == [CDN]  # the HTML check sees it too
    assert int(drawn) > 0  # the faults did not stop the page: each check saw its own fault


# --------------------------------------------------------------------------- interaction


def test_a_legend_click_hides_its_group(opened: Opened):
    """Plotly's legend: a click on an entry hides its legend group in that figure ('legendonly', no longer
    drawn); a second click draws it again."""
    before = next(f for f in figures(opened) if f["legend"] >= 2 and not f["views"])
    fid = before["id"]
    entry = opened.page.locator(f"#{fid} .legend .traces").first
    name = entry.locator(".legendtext").text_content()
    entry.locator(".legendtoggle").click()
    # Plotly acts on a single click after its double-click delay: wait for the state, not for a time
    opened.page.wait_for_function(f"() => document.querySelector('#{fid} .js-plotly-plot').data"
                                  ".some(t => t.visible === 'legendonly')")
    after = figure(opened, fid)
    entry.locator(".legendtoggle").click()
    opened.page.wait_for_function(f"() => !document.querySelector('#{fid} .js-plotly-plot').data"
                                  ".some(t => t.visible === 'legendonly')")
    again = figure(opened, fid)
    assert not opened.problems(), opened.problems()
    hidden = [i for i, t in enumerate(after["traces"]) if t["visible"] == "legendonly"]
    groups = {after["traces"][i]["group"] for i in hidden}
    assert groups == {name}, (groups, name)
    group = [i for i, t in enumerate(before["traces"]) if t["group"] == name]
    assert hidden == [i for i in group if before["traces"][i]["visible"] is True]
    assert all(after["traces"][i] == before["traces"][i] for i in range(len(before["traces"])) if i not in hidden)
    assert after["drawn"] == before["drawn"] - len(hidden) < before["drawn"], (before["drawn"], after["drawn"])
    assert again["traces"] == before["traces"] and again["drawn"] == before["drawn"]


def test_the_method_filter_hides_a_method_everywhere(opened: Opened):
    """Unticking a method in the page's filter hides its traces (visible false; a pair's when either of its
    methods is unticked) in every figure that has them and leaves every other trace as it was; ticking it again
    restores every figure."""
    page = opened.page
    before = figures(opened)
    methods = page.locator("#method-filter input[type=checkbox]").evaluate_all("bs => bs.map(b => b.value)")
    per_method = {m: sum(any(m in t["methods"] for t in f["traces"]) for f in before) for m in methods}
    method = max(methods, key=lambda m: per_method[m])  # the method in the most figures
    page.locator("#method-filter summary").click()
    box = page.locator(f"#method-filter input[type=checkbox][value='{method}']")
    box.uncheck()
    page.wait_for_function(f"m => {TRACES_JS}.every(t => !t.methods.includes(m) || t.visible === false)",
                           arg=method)
    unticked = figures(opened)
    box.check()
    page.wait_for_function(f"m => {TRACES_JS}.some(t => t.methods.includes(m) && t.visible === true)",
                           arg=method)
    ticked = figures(opened)
    assert not opened.problems(), opened.problems()
    assert per_method[method] >= 10, per_method
    changed = 0
    for b, u in zip(before, unticked, strict=True):
        ours = [i for i, t in enumerate(b["traces"]) if method in t["methods"]]
        assert all(u["traces"][i]["visible"] is False for i in ours), b["id"]
        assert all(u["traces"][i] == t for i, t in enumerate(b["traces"]) if i not in ours), b["id"]
        assert u["drawn"] == shown(u) == b["drawn"] - sum(b["traces"][i]["visible"] is True for i in ours), b["id"]
        changed += u["drawn"] < b["drawn"]
    assert changed >= 10, changed  # figures whose drawing changed
    assert [(f["traces"], f["drawn"]) for f in ticked] == [(f["traces"], f["drawn"]) for f in before]


def test_a_view_selector_switches_the_view(opened: Opened):
    """A figure with views (layers, steps, ...) shows its first view; picking the second in its selector hides
    the first view's traces and shows the second's; picking the first again draws the figure as before."""
    before = next(f for f in figures(opened) if len(f["views"]) >= 2
                  and {t["view"] for t in f["traces"]} >= set(f["views"][:2]))
    fid, (first, second) = before["id"], before["views"][:2]
    opened.page.locator(f"#{fid} select.view").select_option(index=1)
    opened.page.wait_for_function(f"() => document.querySelector('#{fid} .js-plotly-plot')"
                                  f".getAttribute('data-view') === {second!r}")
    after = figure(opened, fid)
    opened.page.locator(f"#{fid} select.view").select_option(index=0)
    opened.page.wait_for_function(f"() => document.querySelector('#{fid} .js-plotly-plot')"
                                  f".getAttribute('data-view') === {first!r}")
    back = figure(opened, fid)
    assert not opened.problems(), opened.problems()
    assert back == before
    assert before["view"] == first and after["view"] == second
    for b, a in ((before, first), (after, second)):
        for t in b["traces"]:
            assert t["visible"] is (t["view"] == a or not t["view"]), (b["id"], a, t)
    assert after["drawn"] == shown(after) == sum(t["view"] in (second, "") for t in after["traces"]) > 0


def test_a_legend_choice_holds_across_views_and_the_filter(opened: Opened):
    """A group hidden by a legend click stays hidden when the figure switches view and when the method filter
    unticks and ticks its method again: the page keeps the choice per figure (report.js)."""
    page = opened.page
    before = next(f for f in figures(opened) if len(f["views"]) >= 2 and f["legend"] >= 2
                  and {t["view"] for t in f["traces"]} >= set(f["views"][:2]))
    fid = before["id"]
    entry = page.locator(f"#{fid} .legend .traces").first
    name = entry.locator(".legendtext").text_content()
    entry.locator(".legendtoggle").click()
    page.wait_for_function(f"() => document.querySelector('#{fid} .js-plotly-plot').data"
                           ".some(t => t.visible === 'legendonly')")
    page.locator(f"#{fid} select.view").select_option(index=1)
    page.wait_for_function(f"() => document.querySelector('#{fid} .js-plotly-plot')"
                           f".getAttribute('data-view') === {before['views'][1]!r}")
    switched = figure(opened, fid)
    method = next(m for t in before["traces"] if t["group"] == name for m in t["methods"])
    page.locator("#method-filter summary").click()
    box = page.locator(f"#method-filter input[type=checkbox][value='{method}']")
    box.uncheck()
    box.check()
    page.wait_for_function(f"m => {TRACES_JS}.some(t => t.methods.includes(m) && t.visible === true)",
                           arg=method)
    refiltered = figure(opened, fid)
    page.locator(f"#{fid} select.view").select_option(index=0)  # undone: back to the first view, where the
    page.wait_for_function(f"() => document.querySelector('#{fid} .js-plotly-plot')"  # first legend entry is
                           f".getAttribute('data-view') === {before['views'][0]!r}")  # the group's again
    entry.locator(".legendtoggle").click()
    page.wait_for_function(f"() => !document.querySelector('#{fid} .js-plotly-plot').data"
                           ".some(t => t.visible === 'legendonly')")
    undone = figure(opened, fid)
    assert not opened.problems(), opened.problems()
    assert undone == before
    second = [t for t in switched["traces"] if t["view"] in (before["views"][1], "")]
    assert any(t["group"] == name for t in second), name  # the group is in the second view too
    for f in (switched, refiltered):
        for t in f["traces"]:
            if t["view"] in (before["views"][1], ""):
                assert t["visible"] == ("legendonly" if t["group"] == name else True), (f["id"], t)


def test_a_page_come_back_to_draws_what_its_restored_controls_say(opened: Opened):
    """The browser restores form controls when a reader comes back to the page: a method unticked before stays
    hidden in every figure, and a figure shows the view its restored selector names."""
    page = opened.page
    method = page.locator("#method-filter input[type=checkbox]").first.get_attribute("value")
    page.locator("#method-filter summary").click()
    page.locator(f"#method-filter input[type=checkbox][value='{method}']").uncheck()
    fid = next(f["id"] for f in figures(opened) if len(f["views"]) >= 2)
    second = page.locator(f"#{fid} select.view option").nth(1).get_attribute("value")
    page.locator(f"#{fid} select.view").select_option(index=1)
    page.goto("about:blank")
    page.go_back()  # back to the page: the browser restores its form controls
    page.wait_for_selector("body[data-figures-rendered]")
    restored = page.locator(f"#method-filter input[type=checkbox][value='{method}']").is_checked()
    after = figures(opened)
    assert not opened.problems(), opened.problems()
    assert restored is False  # the browser kept the unticked box: the drawing must agree with it
    assert all(t["visible"] is False for f in after for t in f["traces"] if method in t["methods"])
    assert any(method in t["methods"] for f in after for t in f["traces"])
    viewed = next(f for f in after if f["id"] == fid)
    assert viewed["view"] == second, (viewed["view"], second)


# --------------------------------------------------------------------------- the first screen


def test_zoo_first_screen_holds_the_verdicts(zoo_report_page: Path, browser: Any, tmp_path: Path):
    """A study of the `zoo` preset's methods (every registered one: 14 or more): the page opens clean, its
    method filter lists every method, and at 1366 x 768 its first screen holds the whole verdict table. That
    screen is the README's screenshot (docs/report-first-screen.png), written only when these checks pass and
    LOWRANK_LENS_UPDATE_SCREENSHOT=1."""
    methods = zoo().methods
    assert len(methods) >= 14, methods
    with open_page(zoo_report_page, browser=browser) as opened:
        assert_clean(opened, zoo_report_page)
        listed = opened.page.locator("#method-filter input[type=checkbox]").evaluate_all("bs => bs.map(b => b.value)")
        summary = opened.page.locator("#method-filter summary").text_content()
        seen = first_screen(opened)
        shot = tmp_path / "zoo-first-screen.png"
        opened.page.screenshot(path=shot)
    assert sorted(listed) == sorted(methods) and f"({len(methods)})" in summary, (listed, summary)
    assert_first_screen_holds_the_verdicts(seen)
    assert shot.stat().st_size > 10_000
    keep_artifact(shot, "report-first-screen-zoo.png")
    if os.environ.get(UPDATE_SCREENSHOT) == "1":  # opt-in: the page shows its time and folder, so every run differs
        partial = README_SCREENSHOT.with_name(f".{README_SCREENSHOT.name}.partial")
        shutil.copyfile(shot, partial)
        os.replace(partial, README_SCREENSHOT)
