"""Checkpoints of every method through lm-evaluation-harness, checked against a direct log-likelihood
computation, and cached so a second call computes nothing (docs/study.md §1.6)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from transformers import LlamaForCausalLM

import lowrank_lens.downstream.evaluate as evaluate
import lowrank_lens.downstream.harness as harness
from lowrank_lens.downstream import choice_loglikelihoods, evaluate_downstream, load_run_tokenizer, predict
from lowrank_lens.downstream.taskspec import resolve_tasks, task_manager
from lowrank_lens.runfolder.loading import load_checkpoint, resolve_checkpoint


def test_lens_mc_runs_for_every_method_without_conversion(nano_runs: dict[str, Path]):
    for method, run in nano_runs.items():
        model = load_checkpoint(resolve_checkpoint(run, "final")).model
        assert isinstance(model, LlamaForCausalLM), method  # what HFLM is handed, as trained
    rows = evaluate_downstream(list(nano_runs.values()), ["lens_mc"], limit=8, seeds=(0,), bootstrap_iters=200)
    assert sorted(r["method"] for r in rows) == sorted(nano_runs)
    for r in rows:
        assert r["task"] == "lens_mc" and r["n"] == 8 and r["step"] == 8 and r["scale"] == "nano"
        assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["acc_norm"] <= 1.0
        assert r["chance"] == pytest.approx(0.25)
        assert r["acc_stderr"] > 0 and r["acc_se_boot"] > 0 or r["acc"] in (0.0, 1.0)


@pytest.mark.parametrize("method", ["full-rank", "cola"])
def test_harness_answers_match_direct_loglikelihoods(nano_runs: dict[str, Path], method: str):
    """lm-eval's per-choice log-likelihoods (log_samples) and its chosen answer equal a direct computation
    from the model's logits: sum of log p(choice tokens | prompt)."""
    run = nano_runs[method]
    model = load_checkpoint(resolve_checkpoint(run, "final")).model
    tok = load_run_tokenizer(run)
    specs = resolve_tasks(["lens_mc"])
    task_dict, units = harness.load_tasks(task_manager(specs), specs)
    lm = harness.make_lm(model, tok, batch_size=4, max_length=model.config.max_position_embeddings)
    raw = harness.run_seed(lm, task_dict, seed=0, limit=4)
    samples = sorted(raw["samples"]["lens_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == 4
    for s in samples:
        context = s["arguments"][0][0]
        choices = s["doc"]["choices"]
        harness_ll = [float(r[0]) for r in s["filtered_resps"]]
        direct_ll = choice_loglikelihoods(model, tok, context, choices)
        np.testing.assert_allclose(harness_ll, direct_ll, rtol=1e-4, atol=1e-3)
        assert int(np.argmax(harness_ll)) == predict(direct_ll)
        assert s["acc"] == float(predict(direct_ll) == s["target"])
        assert s["acc_norm"] == float(predict(direct_ll, choices) == s["target"])
    filled, arrays = harness.extract(raw, units["lens_mc"])
    assert filled[0]["metrics"]["acc"] == pytest.approx(arrays["leaf0.acc"].mean())


def test_results_are_cached(nano_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    runs = [nano_runs["full-rank"], nano_runs["relora"]]
    first = evaluate_downstream(runs, ["lens_mc"], limit=6, seeds=(0, 1), bootstrap_iters=100)
    assert all(r["n_seeds"] == 2 and r["eval_seeds"] == "0,1" for r in first)
    # Zero-shot multiple choice is deterministic: the seeds agree.
    assert all(r["acc_std_seeds"] == 0.0 for r in first)
    stored = list((runs[0] / "analysis" / "downstream").glob("*.json"))
    assert len(stored) >= 2

    def boom(*a, **k):
        raise AssertionError("a cached result was recomputed")

    monkeypatch.setattr(evaluate, "run_seed", boom)  # the names the evaluation loop calls
    monkeypatch.setattr(evaluate, "make_lm", boom)
    again = evaluate_downstream(runs, ["lens_mc"], limit=6, seeds=(0, 1), bootstrap_iters=100)
    assert again == first
    # A changed setting that alters scores is a different result.
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate_downstream(runs, ["lens_mc"], limit=5, seeds=(0,))


def test_run_eval_downstream_writes_table(nano_runs: dict[str, Path], tmp_path: Path):
    from lowrank_lens.analysis.tables import read_csv
    from lowrank_lens.downstream import DownstreamRequest, run_eval_downstream

    csv = run_eval_downstream(DownstreamRequest([nano_runs["sltrain"]], tasks="lens_mc", seeds=[0],
                                                out=tmp_path / "rep", limit=4, device="cpu"))
    assert csv == tmp_path / "rep" / "downstream.csv"
    rows = read_csv(csv)
    assert len(rows) == 1 and rows[0]["task"] == "lens_mc" and rows[0]["method"] == "sltrain"
    assert not math.isnan(rows[0]["acc"])
