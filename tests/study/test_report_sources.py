"""`lowrank-lens report A B --out DIR`: several sources side by side, the differences between them computed
by the findings stage (findings/sources.py) and only rendered by the report."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lens_browser import open_page
from lens_testutil import run_cli
from scipy import stats

from lowrank_lens.analysis.charts import Chart, Series
from lowrank_lens.analysis.context import EvalSettings
from lowrank_lens.analysis.runner import analyze
from lowrank_lens.cli import report as report_command
from lowrank_lens.findings.sources import source_findings, welch_interval
from lowrank_lens.presets import build_config
from lowrank_lens.report import run_records
from lowrank_lens.report.figures import style_sources
from lowrank_lens.report.sources import source_labels
from lowrank_lens.study.findings_stage import write_findings
from lowrank_lens.study.spec import StudySpec
from lowrank_lens.train import train

TRAINING = ["train.steps=8", "train.checkpoints=2", "train.eval_every=8"]


def test_welch_interval_equals_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 4), rng.normal(1.5, 0.8, 6)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert welch_interval(a, b) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert all(math.isnan(v) for v in welch_interval([1.0], b))
    assert welch_interval([2.0, 2.0], [3.0, 3.0]) == (1.0, 1.0)


def _tables(records):
    return SimpleNamespace(records=records, metrics=[])


def _record(method, seed, ppl, scale="nano"):
    return {"run": f"{method}-{seed}", "method": method, "scale": scale, "seed": seed, "final_val_ppl": ppl}


def test_differences_only_where_two_sources_share_a_method_and_scale():
    a = _tables([_record("full-rank", 0, 10.0), _record("full-rank", 1, 12.0), _record("galore", 0, 20.0)])
    b = _tables([_record("full-rank", 0, 15.0), _record("full-rank", 1, 17.0), _record("cola", 0, 30.0),
                 _record("galore", 0, 21.0, scale="micro")])
    found = source_findings([("a", a), ("b", b)])
    assert {(h["source"], h["method"], h["scale"]) for h in found["headline"]} == {
        ("a", "full-rank", "nano"), ("a", "galore", "nano"), ("b", "full-rank", "nano"), ("b", "cola", "nano"),
        ("b", "galore", "micro")}
    (d,) = found["differences"]
    assert (d["method"], d["source_a"], d["source_b"]) == ("full-rank", "a", "b")
    assert d["diff"] == pytest.approx(5.0) and (d["mean_a"], d["mean_b"]) == (11.0, 16.0)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(welch_interval([10.0, 12.0], [15.0, 17.0]))
    p = stats.ttest_ind([10.0, 12.0], [15.0, 17.0], equal_var=False).pvalue
    assert d["p"] == pytest.approx(p) and d["verdict"] == ("different" if p < 0.05 else "not significant")
    one = source_findings([("a", _tables([_record("galore", 0, 1.0)])), ("b", _tables([_record("galore", 0, 2.0)]))])
    assert one["differences"][0]["verdict"] == "insufficient seeds"


def test_a_diverged_seed_is_left_out_of_a_difference():
    """A NaN final perplexity (a diverged seed) is left out of the means, the CI and the test alike, as the
    seed statistics leave it out; it does not turn a clear difference into NaN."""
    a = _tables([_record("galore", 0, 10.0), _record("galore", 1, 10.1), _record("galore", 2, math.nan)])
    b = _tables([_record("galore", 0, 20.0), _record("galore", 1, 20.1), _record("galore", 2, 20.2)])
    (d,) = source_findings([("a", a), ("b", b)])["differences"]
    assert d["n_a"] == 2 and d["mean_a"] == pytest.approx(10.05)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(welch_interval([10.0, 10.1], [20.0, 20.1, 20.2]))
    assert d["p"] == pytest.approx(stats.ttest_ind([10.0, 10.1], [20.0, 20.1, 20.2], equal_var=False).pvalue)
    assert d["verdict"] == "different"


def test_labels_of_folders_with_one_name_name_their_parents(tmp_path):
    paths = [tmp_path / "a" / "s", tmp_path / "b" / "s", tmp_path / "c" / "t"]
    assert source_labels(paths) == ["a/s", "b/s", "t"]


def test_a_metric_series_of_each_source_has_its_own_group_line_style_and_legend_entry():
    """As a metric's charts() leave them (one legend entry per method), then told apart by source: the labels
    'a' and 'a/s' (one the other's prefix) each get their group, dash and one entry; a series of no source and
    one of no method stay as they were; with one source nothing changes."""
    def line(name: str, legend: bool = False, method: str = "galore") -> Series:
        return Series([0, 1], [1.0, 2.0], name=name, method=method, legend=legend)

    def chart() -> Chart:
        return Chart("c", "t", "x", "y", [line("a/s/run0", legend=True), line("a/s/run1"), line("a/run0"),
                                          line("a/run1"), line("a/s: galore-full-rank nano 0"), line("other"),
                                          line("reference", legend=True, method="")])
    (styled,) = style_sources([chart()], ["a/s", "a", "a"])
    got = [(s.group, s.dash, s.legend) for s in styled.series]
    assert got == [("galore (a/s)", "dash", True), ("galore (a/s)", "dash", False), ("galore (a)", "solid", True),
                   ("galore (a)", "solid", False), ("galore (a/s)", "dash", False), ("", "solid", False),
                   ("", "solid", True)]
    (alone,) = style_sources([chart()], ["a"])
    assert alone == chart()


def _study(folder: Path, extra: list[str]) -> Path:
    runs = [train(build_config("nano", m, TRAINING + [f"train.seed={s}", *extra]), folder / "runs")
            for m in ("full-rank", "galore") for s in (0, 1)]
    spec = StudySpec(name=folder.name, scales=["nano"], seeds=[0, 1], overrides=TRAINING, sequences=8,
                     eval_batch_size=8, downstream_tasks=[])
    (folder / "study.json").write_text(json.dumps({"spec": spec.to_dict(), "runs": [r.name for r in runs]}))
    analyze(runs, ["spectra"], None, None, [], EvalSettings(sequences=8, batch_size=8), folder / "analysis",
            plots=False)
    write_findings(folder)
    return folder


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory) -> tuple[Path, Path]:
    """Two nano studies of full-rank and GaLore, 2 seeds each; the second trains with another lr."""
    root = tmp_path_factory.mktemp("sources")
    return _study(root / "last-week", []), _study(root / "this-week", ["optim.lr=0.002"])


@pytest.fixture(scope="module")
def combined(two_studies, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("combined") / "side-by-side"
    report_command(list(two_studies), out)  # the CLI command's own function (one-line errors: tested below)
    return out


def test_two_studies_side_by_side(two_studies, combined):
    a, b = two_studies
    index = json.loads((combined / "findings" / "findings.json").read_text())
    assert [s["label"] for s in index["sources"]] == ["last-week", "this-week"]
    assert all(len(s["claims"]) == 8 for s in index["sources"])  # each source's own verdicts, carried over
    rows = {(r["method"], r["column"]): r for r in _csv(combined / "findings" / "source_differences.csv")}
    for method in ("full-rank", "galore"):
        ppl = [[r["final_val_ppl"] for r in run_records(s) if r["method"] == method] for s in (a, b)]
        d = rows[(method, "final_val_ppl")]
        assert float(d["mean_a"]) == pytest.approx(np.mean(ppl[0])) and float(d["mean_b"]) == pytest.approx(
            np.mean(ppl[1]))
        assert (float(d["ci_low"]), float(d["ci_high"])) == pytest.approx(welch_interval(*ppl))
        assert any(k[0] == method and k[1] != "final_val_ppl" for k in rows)  # spectra's headline column too
    page = (combined / "report" / "index.html").read_text()
    assert "Sources side by side" in page and "last-week/nano-full-rank" in page and "this-week/nano-galore" in page
    assert (combined / "report" / "tables" / "source_differences.csv").is_file()
    assert (combined / "report" / "figures" / "sources" / "source_differences.png").is_file()


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_a_run_folder_is_a_source(two_studies, tmp_path, capsys, monkeypatch):
    a, b = two_studies
    run = a / "runs" / json.loads((a / "study.json").read_text())["runs"][0]
    code, err = run_cli(["report", str(run), str(b), "--out", str(tmp_path / "r")], capsys, monkeypatch)
    assert code == 0, err
    listing = json.loads((tmp_path / "r" / "findings" / "findings.json").read_text())["sources"]
    assert [(s["label"], s["kind"]) for s in listing] == [(run.name, "run"), ("this-week", "study")]


@pytest.mark.parametrize("args, fragment", [
    (["A", "B"], "need --out DIR"),
    (["A", "B", "--out", "A"], "inside source"),
    (["A", "/no/such/folder", "--out", "C"], "does not exist"),
    (["A", "B", "--out", "A/report"], "inside source"),
    (["A", "B", "--out", "A/runs"], "inside source"),
    (["A/runs/x", "B", "--out", "A"], "holds it"),
    (["A", "A", "--out", "C"], "given twice"),
    (["A", "B", "--out", "other-run"], "is a run folder"),
    (["R"], "is a run folder: give --out DIR"),
])
def test_bad_sources_are_one_line_errors(two_studies, args, fragment, tmp_path, capsys, monkeypatch):
    run = next((two_studies[0] / "runs").iterdir())
    other = tmp_path / "other-run"  # a run folder outside both sources
    other.mkdir()
    shutil.copyfile(run / "config.json", other / "config.json")
    where = {"other-run": str(other), "A": str(two_studies[0]), "B": str(two_studies[1]), "C": str(tmp_path / "c"),
             "R": str(run), "A/report": str(two_studies[0] / "report"), "A/runs": str(two_studies[0] / "runs"),
             "A/runs/x": str(run)}
    code, err = run_cli(["report", *[where.get(x, x) for x in args]], capsys, monkeypatch)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err


def test_the_side_by_side_page_opens_clean_in_chromium(combined):
    """The combined page in headless Chromium: no console message, page error or network request; every
    figure drawn, the differences figure among them with one view per quantity."""
    page = combined / "report" / "index.html"
    with open_page(page) as opened:
        drawn = int(opened.page.get_attribute("body", "data-figures-rendered"))
        views = opened.page.locator("#fig-sources-source_differences select.view option").all_text_contents()
        spectra = opened.page.evaluate(SPECTRA_TRACES_JS)
        problems, blocked = opened.problems(), list(opened.blocked)
    assert not problems and not blocked, (problems, blocked)
    assert drawn == page.read_text().count('<figure class="ifig"') > 5
    assert len(views) >= 2 and all(" - " in v for v in views), views  # final_val_ppl and spectra's headline
    # a metric's figures tell the sources apart: per method and source a legend group, its own line style
    groups = {(t["group"], t["dash"]) for t in spectra}
    assert groups == {(f"{m} ({label})", dash) for m in ("full-rank", "galore")
                      for label, dash in (("last-week", "solid"), ("this-week", "dash"))}, groups
    assert {t["group"] for t in spectra if t["legend"]} == {g for g, _ in groups}


SPECTRA_TRACES_JS = """() => Array.from(document.querySelectorAll('figure.ifig[id^="fig-spectra-"] .js-plotly-plot'))
  .flatMap(d => d.data.filter(t => (t.meta || {}).method && t.hoverinfo !== 'skip')
  .map(t => ({group: t.legendgroup, dash: (t.line || {}).dash, legend: t.showlegend !== false})))"""
"""The spectra figures' method traces (bands aside): legend group, line style, whether it has a legend entry."""
