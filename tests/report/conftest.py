"""A tiny study directory shared by the report tests: nano runs of every method, all metrics with quick
options, a synthetic downstream table (the lm-eval stage is tested in tests/downstream), the real
prediction stage on it, and the report written from it, with checkpoint loading and metric computation
disabled so the test proves the report reads files only. And a smaller-still study of the methods of the
`zoo` preset (every registered one, 14 or more: the page's first screen as a study of that many shows it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from lens_testutil import one_torch_thread

from lowrank_lens.analysis.base import Metric
from lowrank_lens.analysis.context import EvalSettings
from lowrank_lens.analysis.runner import analyze
from lowrank_lens.analysis.tables import write_csv
from lowrank_lens.presets import build_config
from lowrank_lens.report import interactive, run_records, write_report
from lowrank_lens.study.findings_stage import write_findings
from lowrank_lens.study.presets import PAPER_METHODS, zoo
from lowrank_lens.study.spec import StudySpec
from lowrank_lens.train import train

TRAINING = ["train.steps=12", "train.checkpoints=3", "train.eval_every=12"]
QUICK = ["landscape_random.directions=3", "landscape_random.points=5", "landscape_pca.k=2", "landscape_pca.points=5",
         "trajectory_pca.components=2", "trajectory_pca.points=5", "interpolation.points=5", "imib.points=5",
         "curvature.lanczos_iters=5", "curvature.hutchinson_probes=4"]
SETTINGS = EvalSettings(sequences=8, batch_size=8)
HOSTILE_NOTE = "<script>window.__injected = 1</script> & notes are escaped"
ZOO_TRAINING = ["train.steps=4", "train.checkpoints=2", "train.eval_every=4"]
"""The zoo study's runs: the fewest steps with two checkpoints and a final validation perplexity."""
ZOO_METRICS = ["landscape_random", "landscape_pca", "activation_similarity"]
"""The cheap metrics the claims' interval plots read (claims 1-5; imib, for claim 3, runs at the final step
only: its 91 method pairs at 14 methods are most of the cost); claim 6 reads the synthetic downstream table, 7 the
prediction stage, 8 the runs' final validation perplexity."""
ZOO_QUICK = ["landscape_random.directions=2", "landscape_random.points=3", "landscape_pca.k=1",
             "landscape_pca.points=3", "imib.points=3"]


@pytest.fixture
def pngs_only(monkeypatch: pytest.MonkeyPatch):
    """`pngs_only(prefix)`: the report then writes only the PNGs of charts whose name starts with `prefix`, for
    a test about other parts of the page, which would otherwise spend seconds drawing every metric's figure
    with matplotlib (the page's interactive figures and PNG links are written as always)."""
    real = interactive.chart_png

    def only(prefix: str) -> None:
        monkeypatch.setattr(interactive, "chart_png",
                            lambda chart, path: real(chart, path) if chart.name.startswith(prefix) else path)
    return only


@pytest.fixture(scope="session")
def single_thread_session() -> Iterator[None]:
    with one_torch_thread():
        yield


def _downstream(study: Path) -> Path:
    """A downstream.csv in the layout of downstream/evaluate.py (synthetic accuracies)."""
    rows = []
    for i, r in enumerate(run_records(study)):
        for j, task in enumerate(("probe_a", "probe_b")):
            rows.append({"metric": "downstream", "run": r["run"], "method": r["method"], "scale": r["scale"],
                         "seed": r["seed"], "step": r["final_step"], "task": task, "n": 40, "n_seeds": 1,
                         "acc": 0.3 + 0.03 * i + 0.05 * j, "acc_std_seeds": 0.01, "chance": 0.25})
    return write_csv(rows, study / "downstream" / "downstream.csv")


def _no_compute(*args, **kwargs):
    raise AssertionError("the report must not load a checkpoint or compute a metric")


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, single_thread_session) -> Path:
    """<study>/ with study.json, runs/, analysis/, downstream/, prediction/, timings.json (no report yet)."""
    from lowrank_lens.study.stages import run_prediction

    study = tmp_path_factory.mktemp("tiny-study")
    # the study's six methods: the page is laid out (and its first screen tested) for the paper's grid
    runs = [train(build_config("nano", m, TRAINING), study / "runs") for m in PAPER_METHODS]
    spec = StudySpec(name="tiny", scales=["nano"], seeds=[0], overrides=TRAINING, metric_overrides=QUICK,
                     sequences=8, eval_batch_size=8, downstream_tasks=[], notes=[HOSTILE_NOTE])
    (study / "study.json").write_text(json.dumps({"spec": spec.to_dict(), "runs": [r.name for r in runs]}))
    analyze(runs, None, None, None, QUICK, SETTINGS, study / "analysis", plots=False)
    run_prediction(runs, study / "analysis", _downstream(study), study / "prediction", ["landscape_random.es"],
                   n_perm=20)
    (study / "timings.json").write_text(json.dumps({"train": 12.0, "analyze": 30.0}))
    return study


@pytest.fixture(scope="session")
def report_page(tiny_study: Path) -> Path:
    """The findings and report of the tiny study, written while loading checkpoints and computing metrics raise."""
    import lowrank_lens.runfolder.checkpoint as checkpoint
    import lowrank_lens.runfolder.loading as loading

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Metric, "compute", _no_compute)
        mp.setattr(checkpoint, "load_model_state", _no_compute)
        mp.setattr(loading, "load_checkpoint", _no_compute)
        write_findings(tiny_study)
        return write_report(tiny_study)


@pytest.fixture(scope="session")
def zoo_report_page(tmp_path_factory: pytest.TempPathFactory, single_thread_session) -> Path:
    """The report of a study of the `zoo` preset's methods (every registered one, 14 or more) at nano: 4 steps,
    the claims' cheap metrics (ZOO_METRICS, imib at the final step), the synthetic downstream table and the
    prediction stage, so that every claim but 7 (permutation p-values) has its interval plot. About 25-35 s on
    2 cores (14 methods)."""
    from lowrank_lens.study.stages import run_prediction

    study = tmp_path_factory.mktemp("zoo-study")
    methods = zoo().methods
    runs = [train(build_config("nano", m, ZOO_TRAINING), study / "runs") for m in methods]
    spec = StudySpec(name="zoo-nano", methods=methods, scales=["nano"], seeds=[0], overrides=ZOO_TRAINING,
                     metric_overrides=ZOO_QUICK, sequences=8, eval_batch_size=8, downstream_tasks=[])
    (study / "study.json").write_text(json.dumps({"spec": spec.to_dict(), "runs": [r.name for r in runs]}))
    analyze(runs, ZOO_METRICS, None, None, ZOO_QUICK, SETTINGS, study / "analysis", plots=False)
    analyze(runs, ["imib"], [-1], None, ZOO_QUICK, SETTINGS, study / "analysis", plots=False)
    run_prediction(runs, study / "analysis", _downstream(study), study / "prediction", ["landscape_random.es"],
                   n_perm=20)
    write_findings(study)
    return write_report(study)

