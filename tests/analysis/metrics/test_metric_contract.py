"""Contract of every registered metric, parametrized over the registry (a new metric is covered for free):
it runs on tiny runs of every distinct parameterization (conftest.distinct_runs), its results are cached
by content, a changed option recomputes only that metric, tables are written, and a checkpoint is never mutated."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lowrank_lens.analysis.base import DIMENSIONS, SUBJECT_KINDS
from lowrank_lens.analysis.context import EvalSettings
from lowrank_lens.analysis.metrics import get_metric, metric_names
from lowrank_lens.analysis.runner import analyze
from lowrank_lens.analysis.tables import read_csv
from lowrank_lens.runfolder.checkpoint import complete_checkpoints, file_sha256

# Small settings so every metric runs in seconds on nano runs; each metric's own defaults are the study's.
QUICK = {
    "landscape_random": ["directions=3", "points=5"],
    "landscape_pca": ["k=2", "points=5"],
    "trajectory_pca": ["components=2", "points=5"],
    "interpolation": ["points=5"],
    "imib": ["points=5"],
    "curvature": ["lanczos_iters=5", "hutchinson_probes=4"],
}
SETTINGS = EvalSettings(sequences=8, batch_size=8)


def quick_overrides(name: str) -> list[str]:
    return [f"{name}.{o}" for o in QUICK.get(name, [])]


@pytest.mark.parametrize("name", metric_names())
def test_metric_declares_itself(name):
    cls = get_metric(name)
    assert cls.name == name and cls.dimension in DIMENSIONS and cls.subject_kind in SUBJECT_KINDS
    assert len(cls.definition) > 20, "the README and report show each metric's definition"
    assert dataclasses.is_dataclass(cls.Config)


@pytest.mark.parametrize("name", metric_names())
def test_metric_runs_caches_and_tabulates(name, distinct_runs, tmp_path):
    runs = list(distinct_runs.values())
    hashes = {p: file_sha256(p / "model.safetensors") for r in runs for _, p in complete_checkpoints(r)}
    first = analyze(runs, [name], overrides=quick_overrides(name), settings=SETTINGS, out=tmp_path, plots=True)
    outcome = first[name]
    assert outcome.rows, f"{name} produced no result on runs of every method"
    done = [r for r in outcome.results if not r.skipped]
    assert done, f"{name} skipped every subject: {[r.skipped for r in outcome.results][:3]}"
    for r in done:
        values = list(outcome.metric.summarize(r).values())
        assert any(isinstance(v, float) and math.isfinite(v) for v in values), f"{name}: no finite summary"
    rows = read_csv(tmp_path / f"{name}.csv")
    assert len(rows) == len(outcome.rows) and all(row["metric"] == name for row in rows)

    again = analyze(runs, [name], overrides=quick_overrides(name), settings=SETTINGS, out=tmp_path)[name]
    assert again.computed == 0 and again.cached == len(outcome.results)
    assert [r.scalars for r in again.results] == [r.scalars for r in outcome.results]
    # Analysis never writes into a checkpoint.
    assert all(file_sha256(p / "model.safetensors") == h for p, h in hashes.items())


def test_changed_option_recomputes_only_that_metric(tiny_runs, tmp_path):
    runs = [tiny_runs["full-rank"], tiny_runs["galore"]]
    analyze(runs, ["spectra"], settings=SETTINGS, out=tmp_path, plots=False)
    changed = analyze(runs, ["spectra"], overrides=["spectra.threshold=0.05"], settings=SETTINGS, out=tmp_path,
                      plots=False)["spectra"]
    assert changed.cached == 0 and changed.computed > 0
    back = analyze(runs, ["spectra"], settings=SETTINGS, out=tmp_path, plots=False)["spectra"]
    assert back.computed == 0


def test_the_distinct_parameterizations_are_the_known_five(distinct_runs):
    """Full-rank stands for the optimizer-only methods, LoRA for ReLoRA (W0 + B A), LORO for low-rank (B A);
    CoLA (no dense view) and SLTrain (sparse values + index) are their own. A method that stores something
    new joins the set."""
    assert set(distinct_runs) == {"full-rank", "cola", "lora", "loro", "sltrain"}
