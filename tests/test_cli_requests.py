"""Typed requests (issue 26 §4): the request `analyze` / `eval-downstream` build from a command line equals the
one a Python caller builds from keywords, the keyword-compatible wrappers keep their old positional order, and
a bad field is one LensError line naming it. Nothing is computed: the runners are replaced by a recorder."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from lens_testutil import require_package, run_cli

from lowrank_lens import cli
from lowrank_lens.analysis import runner
from lowrank_lens.analysis.context import EvalSettings
from lowrank_lens.analysis.request import AnalysisRequest, from_call
from lowrank_lens.errors import LensError


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A folder the commands take for a run (config.json); the recorder never opens it."""
    run = tmp_path / "runs" / "nano-galore-seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    return run


def _recorded(monkeypatch, module, name: str, args: list[str], capsys) -> object:
    got: list[object] = []
    monkeypatch.setattr(module, name, got.append)  # the name the CLI calls
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    (req,) = got
    return req


def test_analysis_request_from_keywords_equals_the_cli_one(run, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    args = ["analyze", str(run), "--metrics", "spectra, curvature", "--steps", "0,final", "--set",
            "spectra.threshold=0.05", "--set", "curvature.hutchinson_probes=2", "--sequences", "8", "--batch-size", "4",
            "--device", "cpu", "--dtype", "fp64", "--no-plots", "--jobs", "2", "--cache-dir", str(cache), "--force"]
    from_cli = _recorded(monkeypatch, cli, "run_analysis", ["analyze", str(run)], capsys)
    assert from_cli == AnalysisRequest(run)  # the defaults agree, --out's default included
    assert from_cli.out == run.parent / "analysis" and from_cli.settings == EvalSettings()
    from_cli = _recorded(monkeypatch, cli, "run_analysis", args, capsys)
    by_keywords = AnalysisRequest(str(run), metrics=["spectra", "curvature"], steps="0,final",
                                  overrides=["spectra.threshold=0.05", "curvature.hutchinson_probes=2"],
                                  settings={"sequences": 8, "batch_size": 4, "device": "cpu", "dtype": "fp64"},
                                  plots=False, jobs=2, cache_dir=str(cache), force=True)
    assert from_cli == by_keywords
    assert by_keywords.steps == (0, -1) and by_keywords.out == cache / "analysis"
    assert pickle.loads(pickle.dumps(by_keywords)) == by_keywords  # the worker processes get it pickled


def test_downstream_request_from_keywords_equals_the_cli_one(run, tmp_path, capsys, monkeypatch):
    require_package("lm_eval", "pip install -e '.[eval]'")
    from lowrank_lens.downstream.request import DownstreamRequest

    cache, inc, table = tmp_path / "cache", tmp_path / "tasks", tmp_path / "tables" / "acc.csv"
    args = ["eval-downstream", str(run), "--tasks", "lens_mc,study", "--step", "500", "--seeds", "0,1,2",
            "--limit", "8", "--batch-size", "4", "--num-fewshot", "1", "--bootstrap-iters", "0",
            "--rebuild-tokenizer", "--device", "cpu", "--out", str(table), "--cache-dir", str(cache), "--force",
            "--include-path", str(inc)]
    from_cli = _recorded(monkeypatch, cli, "run_eval_downstream", ["eval-downstream", str(run)], capsys)
    assert from_cli == DownstreamRequest(run) and from_cli.out == run.parent / "downstream"
    from_cli = _recorded(monkeypatch, cli, "run_eval_downstream", args, capsys)
    by_keywords = DownstreamRequest(run, tasks=["lens_mc", "study"], step=500, seeds=[0, 1, 2], limit=8,
                                    batch_size=4, num_fewshot=1, bootstrap_iters=0, rebuild_tokenizer=True,
                                    device="cpu", out=table, cache_dir=cache, force=True, include_path=inc)
    assert from_cli == by_keywords
    assert by_keywords.score_settings == {"limit": 8, "num_fewshot": 1, "dtype": "float32", "max_length": None}


def test_the_wrappers_keep_their_positional_order(run, tmp_path):
    out = tmp_path / "tables"
    old_style = from_call(AnalysisRequest, runner.ANALYZE_ORDER,
                          ([run], None, [-1], None, ["spectra.threshold=0.05"], None, out), {"plots": False})
    assert old_style == AnalysisRequest(run, steps="final", overrides="spectra.threshold=0.05", out=out, plots=False)
    with pytest.raises(TypeError, match="plots given both by position and by name"):
        from_call(AnalysisRequest, runner.ANALYZE_ORDER, ([run], None, None, None, (), None, out, False, True),
                  {"plots": False})
    with pytest.raises(TypeError, match="at most 12 positional"):
        from_call(AnalysisRequest, runner.ANALYZE_ORDER, (run,) * 13, {})


@pytest.mark.parametrize("keywords, fragment", [
    (dict(runs=[]), "no run directory given"),
    (dict(jobs=0), "jobs 0: analysis needs at least one process"),
    (dict(jobs="2"), "analysis.jobs expects int, got '2'"),
    (dict(plots="no"), "analysis.plots expects true or false"),
    (dict(steps="5x"), "--steps '5x'"),
    (dict(steps=[0.5]), "analysis.steps expects int"),
    (dict(metrics=[1]), "analysis.metrics expects comma-separated names"),
    (dict(reference=3), "analysis.reference expects a path"),
    (dict(settings={"sequence": 3}), "unknown field(s) ['sequence']"),
    (dict(settings={"sequences": 0}), "sequences (0) and batch size (32) must be >= 1"),
])
def test_a_bad_analysis_field_is_one_line(keywords, fragment, run):
    with pytest.raises(LensError) as e:
        AnalysisRequest(**{"runs": run, **keywords})
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("keywords, fragment", [
    (dict(runs=[]), "no run directory given"),
    (dict(dtype="fp8"), "dtype 'fp8': choose one of float32, bfloat16, float16"),
    (dict(seeds=[]), "give at least one evaluation seed"),
    (dict(seeds="0,x"), "downstream.seeds '0,x'"),
    (dict(limit=0), "limit 0 is out of range: it must be at least 1"),
    (dict(bootstrap_iters=-1), "bootstrap_iters -1 is out of range: it must be at least 0"),
    (dict(batch_size=0), "batch_size 0 is out of range"),
    (dict(num_fewshot=1.5), "downstream.num_fewshot expects an integer or None, got 1.5"),
    (dict(step="last"), "--step 'last': pass 'final' or a checkpoint step"),
    (dict(force="yes"), "downstream.force expects true or false"),
    (dict(include_path=[3]), "downstream.include_path expects a path"),
])
def test_a_bad_downstream_field_is_one_line(keywords, fragment, run):
    require_package("lm_eval", "pip install -e '.[eval]'")
    from lowrank_lens.downstream.request import DownstreamRequest

    with pytest.raises(LensError) as e:
        DownstreamRequest(**{"runs": run, **keywords})
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
