"""The study runner: the resolved grid and its commands, resumability (finished runs are not retrained, a
killed run resumes), and the whole pipeline train -> analyze -> downstream -> predict -> findings -> report on CPU."""

from __future__ import annotations

import json
import shutil

import pytest
from lens_testutil import require_package

from lowrank_lens.analysis.tables import read_csv
from lowrank_lens.errors import LensError
from lowrank_lens.runfolder.checkpoint import complete_checkpoints
from lowrank_lens.study import train_stage
from lowrank_lens.study.runner import describe_plan, run_study
from lowrank_lens.study.spec import StudySpec, plan_runs
from lowrank_lens.study.spec_files import load_spec

TINY = ["train.steps=8", "train.checkpoints=2", "train.eval_every=0", "train.log_every=4"]


def tiny_spec(**kw) -> StudySpec:
    base = dict(name="t", methods=["full-rank", "galore"], scales=["nano"], seeds=[0, 1], overrides=TINY,
                metrics=["spectra"], downstream_tasks=[], sequences=8, eval_batch_size=8)
    return StudySpec(**{**base, **kw})


def test_plan_and_dry_run_commands(tmp_path):
    spec = load_spec("paper")
    runs = plan_runs(spec)
    assert len(runs) == len(spec.methods) * len(spec.scales) * len(spec.seeds) and runs[0].scale == "60m"
    text = describe_plan(spec, tmp_path)
    assert "torchrun" not in text.splitlines()[-3]  # gpus_per_run 1: plain CLI lines
    multi = describe_plan(StudySpec(**{**spec.to_dict(), "gpus_per_run": 4}), tmp_path)
    assert "torchrun --standalone --nproc_per_node 4 -m lowrank_lens train --preset 350m" in multi
    assert "--resume" in multi and "--set train.seed=2" in multi


def test_bad_study_input_is_one_clear_error(tmp_path):
    with pytest.raises(LensError, match="study method 'sgd' is unknown"):
        StudySpec(methods=["sgd"])
    bad = tmp_path / "s.toml"
    bad.write_text('name = "x"\nmethodz = ["galore"]\n')
    with pytest.raises(LensError, match="unknown study field"):
        load_spec(bad)


def test_finished_runs_are_not_retrained_and_killed_runs_resume(tmp_path, monkeypatch):
    spec = tiny_spec()
    run_study(spec, tmp_path, stages=("train",))
    dirs = [tmp_path / "runs" / r.run_name for r in plan_runs(spec)]
    assert all(complete_checkpoints(d)[-1][0] == 8 for d in dirs)
    # "Kill" one run after its step-4 checkpoint: its final checkpoint never got written.
    killed = dirs[1]
    shutil.rmtree(killed / "ckpt" / "step_000008")
    finals = {d: (d / "ckpt" / "step_000008" / "model.safetensors").stat().st_mtime_ns for d in dirs if d != killed}
    trained = []
    original = train_stage.train

    def spy(cfg, out, run_name=None, resume=False):
        trained.append((run_name, resume))
        return original(cfg, out, run_name=run_name, resume=resume)

    monkeypatch.setattr(train_stage, "train", spy)
    run_study(spec, tmp_path, stages=("train",))
    assert trained == [(killed.name, True)]
    assert complete_checkpoints(killed)[-1][0] == 8
    assert all((d / "ckpt" / "step_000008" / "model.safetensors").stat().st_mtime_ns == t for d, t in finals.items())
    # The study folder (or its study.json record) is itself a study argument: re-run in place.
    assert load_spec(tmp_path).to_dict() == load_spec(tmp_path / "study.json").to_dict() == spec.to_dict()
    # The findings stage alone: statistics and claims computed and written, no report rendered.
    found = run_study(spec, tmp_path, stages=("findings",))
    assert found == tmp_path / "findings" and not (tmp_path / "report").exists()
    pairs = read_csv(found / "pairwise_differences.csv")
    assert {p["column"] for p in pairs} >= {"val_ppl.val_ppl", "val_ppl.val_ppl_reference"}
    assert all(p["n_a"] == p["n_b"] == 2 for p in pairs)  # two seeds per method


def test_parallel_training_and_analysis_match_sequential(tmp_path):
    seq, par = tmp_path / "seq", tmp_path / "par"
    run_study(tiny_spec(), seq, stages=("train", "analyze"))
    run_study(tiny_spec(jobs=2), par, stages=("train", "analyze"))
    a = read_csv(seq / "analysis" / "spectra.csv")
    b = read_csv(par / "analysis" / "spectra.csv")
    assert len(a) == len(b) == 4 * 3  # 4 runs x checkpoints 0, 4, 8
    for ra, rb in zip(a, b, strict=True):  # workers use 1 thread: equal up to summation order
        assert ra.keys() == rb.keys()
        for k, v in ra.items():
            assert v == pytest.approx(rb[k], rel=1e-6) if isinstance(v, float) else v == rb[k]


@pytest.mark.slow
def test_whole_study_on_cpu_ends_in_a_report(tmp_path):
    require_package("lm_eval", "the downstream stage needs the [eval] extra: pip install -e '.[eval]'")
    spec = tiny_spec(methods=["full-rank", "galore", "cola"], metrics=["spectra", "interpolation", "imib"],
                     metric_overrides=["interpolation.points=5", "imib.points=5"], downstream_tasks=["lens_mc"],
                     downstream_limit=8)
    report = run_study(spec, tmp_path)
    assert report.name == "index.html" and report.is_file()
    html = report.read_text()
    for section in ("spectra", "interpolation", "imib", "downstream", "Claims"):
        assert section in html
    assert (tmp_path / "downstream" / "downstream.csv").is_file()
    assert (tmp_path / "prediction").is_dir()
    # the report renders the findings stage's claims as they were computed
    computed = json.loads((tmp_path / "findings" / "claims.json").read_text())["claims"]
    rendered = read_csv(tmp_path / "report" / "tables" / "claims.csv")
    assert [(c["id"], c["verdict"]) for c in computed] == [(r["id"], r["verdict"]) for r in rendered]
    assert "findings" in json.loads((tmp_path / "timings.json").read_text())
