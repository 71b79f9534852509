"""A tiny study directory shared by the report tests: nano runs of every method, all metrics with quick
options, a synthetic downstream table (the lm-eval stage is tested in tests/downstream), the real
prediction stage on it, and the report written from it, with checkpoint loading and metric computation
disabled so the test proves the report reads files only."""

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
from lowrank_lens.report import run_records, write_report
from lowrank_lens.study.findings_stage import write_findings
from lowrank_lens.study.presets import PAPER_METHODS
from lowrank_lens.study.spec import StudySpec
from lowrank_lens.train import train

TRAINING = ["train.steps=12", "train.checkpoints=3", "train.eval_every=12"]
QUICK = ["landscape_random.directions=3", "landscape_random.points=5", "landscape_pca.k=2", "landscape_pca.points=5",
         "trajectory_pca.components=2", "trajectory_pca.points=5", "interpolation.points=5", "imib.points=5",
         "curvature.lanczos_iters=5", "curvature.hutchinson_probes=4"]
SETTINGS = EvalSettings(sequences=8, batch_size=8)
HOSTILE_NOTE = "<script>window.__injected = 1</script> & notes are escaped"


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

