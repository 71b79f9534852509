"""The study report: every registered metric has a section with its figures and table, every image file
exists, every method is in the run table, text is escaped, optional inputs missing degrade to 'not
available', and a new metric plugin shows up with no report change."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lowrank_lens.analysis.base import Metric, Result
from lowrank_lens.analysis.cache import ResultStore
from lowrank_lens.analysis.metrics import METRICS, metric_names
from lowrank_lens.analysis.plotting import save_figure
from lowrank_lens.analysis.tables import read_csv
from lowrank_lens.errors import LensError
from lowrank_lens.findings import parts
from lowrank_lens.methods import get_method, method_names
from lowrank_lens.report import write_report
from lowrank_lens.report.collect import load_study
from lowrank_lens.report.findings_files import load_findings
from lowrank_lens.report.html import fmt, make_table
from lowrank_lens.report.sections import (
    claims_section,
    matched_section,
    pivot_summary,
    statistics_section,
    verdict_class,
)
from lowrank_lens.study.findings_stage import write_findings
from lowrank_lens.study.presets import PAPER_METHODS

SECTIONS = ("overview", "settings", "runs", "statistics", "matched", "claims", "downstream", "prediction",
            "provenance")


class Page(HTMLParser):
    """Ids, figures (image sources and interactive figures' PNG links), links and the run table's cells of a
    report page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.links: list[str] = []
        self.sections: dict[str, list[str]] = {}
        self._section = ""
        self.run_cells: list[str] = []
        self._in_runs_table = False
        self._cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
            if tag == "section":
                self._section = a["id"]
                self.sections[self._section] = []
            if tag == "h2":
                self._in_runs_table = a["id"] == "runs"
        if tag == "img":
            self.images.append(a["src"])
            if self._section:
                self.sections[self._section].append(a["src"])
        if tag == "a" and a.get("href") and not a["href"].startswith("#"):
            self.links.append(a["href"])
            if a["href"].endswith(".png"):  # an interactive figure's PNG (report/interactive.py)
                self.images.append(a["href"])
                if self._section:
                    self.sections[self._section].append(a["href"])
        if tag == "td":
            self._cell = True

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = ""
        if tag == "td":
            self._cell = False

    def handle_data(self, data):
        if self._in_runs_table and self._cell and data.strip():
            self.run_cells.append(data.strip())


def test_page_has_every_section_and_metric(report_page: Path):
    page = Page(report_page.read_text())
    assert report_page.name == "index.html" and report_page.parent.name == "report"
    assert set(SECTIONS) <= page.ids
    for name in metric_names():
        assert f"metric-{name}" in page.ids, f"no section for registered metric {name}"
        assert page.sections[f"metric-{name}"], f"metric {name} has no figure in the report"


def test_every_image_and_link_exists_beside_the_page(report_page: Path):
    page = Page(report_page.read_text())
    assert len(page.images) > 20
    for src in page.images + page.links:
        assert not src.startswith(("http:", "https:", "//", "/")), f"non-relative reference {src}"
        assert (report_page.parent / src).is_file(), f"{src} is referenced but missing"


def test_run_table_lists_every_method_with_its_colour(report_page: Path, tiny_study: Path):
    text = report_page.read_text()
    cells = Page(text).run_cells
    for m in PAPER_METHODS:
        assert m in cells, f"method {m} missing from the run table"
        assert get_method(m).colour in text
    runs = read_csv(report_page.parent / "tables" / "runs.csv")
    assert {r["method"] for r in runs} == set(PAPER_METHODS)
    for r in runs:
        assert r["parameters"] > 0 and r["optimizer state MiB"] > 0 and r["tokens"] > 0
        assert r["val_ppl"] > 1 and r["val_ppl_ref"] > 1


def test_text_is_escaped(report_page: Path, tiny_study: Path):
    hostile = json.loads((tiny_study / "study.json").read_text())["spec"]["notes"][0]
    assert "<script>" in hostile
    text = report_page.read_text()
    assert hostile not in text
    assert "&lt;script&gt;window.__injected" in text
    # the only script elements are the page's own: the two bundled assets and each figure's JSON (whose text
    # has no '<', so no data can close the element early)
    scripts = re.findall(r"<script[^>]*>", text)
    own = {'<script src="assets/plotly.min.js">', '<script src="assets/report.js" defer>',
           '<script type="application/json" class="spec">'}
    assert set(scripts) <= own and scripts.count('<script type="application/json" class="spec">') > 10
    for body in re.findall(r'<script type="application/json" class="spec">(.*?)</script>', text, re.S):
        assert "<" not in body and json.loads(body)["data"]


def test_analysis_sections_are_filled(report_page: Path):
    text = report_page.read_text()
    tables = report_page.parent / "tables"
    claims = read_csv(tables / "claims.csv")
    assert [c["id"] for c in claims] == list(range(1, 9))
    assert all(c["verdict"] in ("holds", "does not hold", "inconclusive") for c in claims)
    matches = read_csv(tables / "matched_checkpoints.csv")
    assert len(matches) == len(PAPER_METHODS) and all("gap" in m for m in matches)
    pairs = read_csv(tables / "pairwise_differences.csv")
    assert pairs and {p["verdict"] for p in pairs} == {"insufficient seeds"}  # one seed: nothing claimed
    assert "single seed" in text
    assert (report_page.parent / "figures" / "prediction" / "predicted_vs_actual.png").is_file()
    assert (tables / "prediction_cv_scores.csv").is_file() and (tables / "downstream_downstream.csv").is_file()
    assert "Not available" not in text.split('id="provenance"')[0].split('id="statistics"')[1]


def test_findings_parts_that_fail_render_not_available(tiny_study: Path, tmp_path: Path, monkeypatch, pngs_only):
    """A findings part whose library is missing is recorded with the reason, and the report renders it
    'not available' while the other parts stand; without findings every part says how to compute them."""
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study, ignore=shutil.ignore_patterns("report", "findings"))
    loaded = load_study(study)
    for section in (claims_section(loaded, None, tmp_path, "tables"),
                    statistics_section(loaded, None, tmp_path, "tables"),
                    matched_section(loaded, None, tmp_path, "tables", tmp_path, "figures")):
        assert section["available"] is False and "--stages report" in section["message"]
    def missing(*args, **kwargs):
        raise ImportError("No module named 'scipy.stats'")

    monkeypatch.setattr(parts, "check_claims", missing)  # the claims part meets a library that is not installed
    pngs_only("no chart")  # the sections' text is checked here, not the figures
    write_findings(study)
    findings = load_findings(study)
    assert findings.status("claims")["available"] is False and "not installed" in findings.status("claims")["message"]
    assert findings.status("statistics")["available"] and findings.status("matched")["available"]
    text = write_report(study).read_text()
    claims = text.split('id="claims"')[1].split('id="downstream"')[0]
    assert "Not available" in claims and "not installed" in claims
    assert "Not available" not in text.split('id="statistics"')[1].split('id="claims"')[0]


def test_findings_are_replaced_whole_and_the_report_refuses_unreadable_ones(tiny_study: Path, tmp_path: Path):
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study, ignore=shutil.ignore_patterns("report", "findings"))
    folder = write_findings(study)
    (folder / "stale.csv").write_text("x\n1\n")
    write_findings(study)
    assert not (folder / "stale.csv").exists() and not list(study.glob(".findings*"))
    index = json.loads((folder / "findings.json").read_text())
    assert index["format"] == 1 and all(p["available"] for p in index["parts"].values()), index["parts"]
    assert "NaN" not in (folder / "claims.json").read_text()  # standard JSON: NaN written as null
    (folder / "findings.json").write_text("{ not json")
    with pytest.raises(LensError, match="unreadable.*--stages report"):
        write_report(study)


def test_table_helpers():
    assert fmt(0.123456) == "0.1235" and fmt(3.0) == "3" and fmt(float("nan")) == "nan" and fmt(None) == ""
    assert fmt(True) == "yes" and fmt([1, 2]) == "1, 2"
    m = method_names()[0]
    t = make_table([{"method": m, "x": 1.5}, {"method": None, "x": 2}], limit=1)
    assert t.total == 2 and len(t.rows) == 1 and t.rows[0][0] == (m, get_method(m).colour)
    wide = pivot_summary([
        {"method": m, "scale": "s", "kind": "checkpoint", "step": 4, "column": "a", "mean": 1.0, "n": 3,
         "ci_low": 0.5, "ci_high": 1.5},
        {"method": m, "scale": "s", "kind": "checkpoint", "step": 4, "column": "b", "mean": 2.0, "n": 1,
         "ci_low": float("nan"), "ci_high": float("nan")}])
    assert wide == [{"method": m, "scale": "s", "kind": "checkpoint", "step": 4, "a": "1 ± 0.5 (3)",
                     "b": "2 (single seed)"}]
    assert verdict_class({"verdict": "within seed spread"}) == "flag"
    assert verdict_class({"verdict": "different"}) == "claimed"


class _Probe(Metric):
    """A metric the report has never seen, registered only inside one test."""

    name = "report_probe"
    dimension = "curvature"
    subject_kind = "checkpoint"
    headline = "value"
    definition = "A probe metric registered by the report test to show new plugins appear unchanged."

    def plot(self, results, out_dir):
        fig, ax = plt.subplots()
        ax.plot([r.subject["step"] for r in results], [r.scalars["value"] for r in results], "o")
        return [save_figure(fig, out_dir / "report_probe_value.png")]


PROBE_VALUES = ((1.0, 1.01), (2.0, 2.02), (1.0, 1.5))
"""Per method (3) and seed (2): methods 0/1 differ clearly, 0/2 differ by less than the seed spread."""


def _meta_only_copy(src: Path, dest: Path, seed: int) -> None:
    """A run directory with config, log and checkpoint meta, and EMPTY weight files (the report must not
    need the weights); `seed` is written into the config and shifts the perplexities a little."""
    dest.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    config["train"]["seed"] = seed
    (dest / "config.json").write_text(json.dumps(config))
    shutil.copyfile(src / "log.jsonl", dest / "log.jsonl")
    for ck in sorted((src / "ckpt").glob("step_*")):
        (dest / "ckpt" / ck.name).mkdir(parents=True)
        meta = json.loads((ck / "meta.json").read_text())
        meta["val"] = {k: v * (1 + 0.01 * seed) for k, v in meta["val"].items()}
        (dest / "ckpt" / ck.name / "meta.json").write_text(json.dumps(meta))
        (dest / "ckpt" / ck.name / "model.safetensors").write_bytes(b"")
        (dest / "ckpt" / ck.name / "state.pt").write_bytes(b"")


def test_a_new_metric_appears_without_report_changes_and_seeds_are_summarised(tiny_study: Path, tmp_path: Path):
    study = tmp_path / "study"
    sources = json.loads((tiny_study / "study.json").read_text())["runs"][:3]
    names = []
    for i, src in enumerate(sources):
        for seed in (0, 1):
            name = src.replace("seed0", f"seed{seed}")
            _meta_only_copy(tiny_study / "runs" / src, study / "runs" / name, seed)
            names.append(name)
            config = json.loads((study / "runs" / name / "config.json").read_text())
            for step in (0, 12):
                subject = {"run": name, "method": config["method"], "scale": config["scale"], "seed": seed,
                           "kind": "checkpoint", "step": step}
                value = PROBE_VALUES[i][seed] * step / 12
                ResultStore(study / "runs" / name).put(f"probe{step}", Result(
                    "report_probe", subject, {"value": value}, {"curve": np.arange(3.0)}, {"config": {}}))
    (study / "study.json").write_text(json.dumps({"spec": {"name": "meta-only"}, "runs": names}))
    METRICS.register("report_probe")(_Probe)
    try:
        write_findings(study)
        page_path = write_report(study)
    finally:
        METRICS._items.pop("report_probe", None)
    text = page_path.read_text()
    page = Page(text)
    assert "metric-report_probe" in page.ids and _Probe.definition in text
    assert page.sections["metric-report_probe"] == ["figures/report_probe/report_probe_value.png"]
    assert all((page_path.parent / s).is_file() for s in page.images)
    tables = page_path.parent / "tables"
    assert sorted(r["value"] for r in read_csv(tables / "report_probe.csv"))[-1] == 2.02
    summary = read_csv(tables / "report_probe_seed_summary.csv")
    assert {r["n"] for r in summary} == {2} and "Over seeds" in text
    pairs = {(p["method_a"], p["method_b"]): p for p in read_csv(tables / "pairwise_differences.csv")
             if p["column"] == "report_probe.value"}
    methods = [json.loads((tiny_study / "runs" / s / "config.json").read_text())["method"] for s in sources]
    assert pairs[tuple(sorted(methods[:2]))]["verdict"] == "different"
    assert pairs[tuple(sorted((methods[0], methods[2])))]["verdict"] == "within seed spread"
    assert 'class="flag"' in text and 'class="claimed"' in text
    assert "Not available: no downstream tables" in text and "Not available: no prediction tables" in text
    matched = read_csv(tables / "matched_checkpoints.csv")
    assert {m["seed"] for m in matched} == {0, 1} and len(matched) == 6


def test_cached_results_prefer_the_study_config_then_the_newest(tmp_path: Path):
    import os

    from lowrank_lens.report.collect import cached_results

    run = tmp_path / "runs" / "r"
    subject = {"run": "r", "method": method_names()[0], "scale": "nano", "seed": 0, "kind": "checkpoint", "step": 4}
    store = ResultStore(run)
    for i, (key, points) in enumerate((("old", 5), ("study", 9), ("newest", 7))):
        path = store.put(key, Result("spectra", subject, {"points": points}, {}, {"config": {"points": points}}))
        os.utime(path, (1000 + i, 1000 + i))
    pick = cached_results("spectra", [run], json.dumps({"points": 9}, sort_keys=True))
    assert [r.scalars["points"] for r in pick] == [9]
    assert [r.scalars["points"] for r in cached_results("spectra", [run], None)] == [7]


def test_results_evaluated_in_bf16_carry_a_warning():
    from types import SimpleNamespace

    from lowrank_lens.report.build import low_precision_warnings

    fp32 = SimpleNamespace(name="landscape_random", evals=[{"dtype": "torch.float32", "device": "cuda"}])
    bf16 = SimpleNamespace(name="curvature", evals=[{"dtype": "torch.bfloat16", "device": "cuda"}])
    assert low_precision_warnings(SimpleNamespace(metrics=[fp32])) == []
    (warning,) = low_precision_warnings(SimpleNamespace(metrics=[fp32, bf16]))
    assert "curvature was evaluated in bf16" in warning and "--dtype fp32" in warning
