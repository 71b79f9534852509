"""The setup's distance from the paper's protocol (findings/setup.py), as the demo's first screen states it, and
the ladder presets' sizes (20 tokens per parameter, checked against the models training builds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank_lens.findings.setup import setup_distance
from lowrank_lens.model.llama import build_model
from lowrank_lens.report.collect import RunInfo
from lowrank_lens.study.ladder import LADDER_SIZES, TOKENS_PER_PARAMETER, parameters
from lowrank_lens.study.spec import plan_runs
from lowrank_lens.study.spec_files import study_presets


def run_info(run, params: int, tokens: int) -> RunInfo:
    """A RunInfo as report/collect.py reads it from a finished run of `run` (config + final checkpoint)."""
    return RunInfo(name=run.run_name, dir=Path(run.run_name), config=run.cfg.to_dict(),
                   checkpoints=[{"step": run.cfg.train.steps, "tokens": tokens, "memory": {"params_total": params}}])


def test_the_demo_states_its_distance_from_the_papers_protocol():
    spec = study_presets()["demo"]()
    runs = plan_runs(spec)
    cfg = runs[0].cfg
    params = sum(p.numel() for p in build_model(cfg.model).parameters())
    tokens = cfg.train.steps * cfg.train.total_batch_size * cfg.data.seq_len
    found = setup_distance(spec.to_dict(), [run_info(r, params, tokens) for r in runs])
    rows = {r["aspect"]: r for r in found["rows"]}
    assert rows["tokens per parameter"]["this study"] == f"{tokens / params:.2g}"  # about 0.4, the demo's
    assert rows["parameters"]["this study"] == f"{params / 1e6:.2f}M"
    assert "tuned for this shape" in rows["learning rates"]["this study"]
    assert rows["seeds"]["this study"] == "3 training seeds"
    assert found["far"] and "do not test the paper's claims" in found["line"]
    assert f"{tokens / params:.2g} tokens per parameter (paper about 20)" in found["line"]


def test_untuned_learning_rates_are_said_so():
    spec = study_presets()["paper"]()
    runs = plan_runs(spec)[:2]
    found = setup_distance(spec.to_dict(), [run_info(r, 58_072_832, 1_310_720_000) for r in runs])
    rows = {r["aspect"]: r for r in found["rows"]}
    assert "not tuned for this shape" in rows["learning rates"]["this study"]
    assert found["far"]  # at the paper's size and length, still: nobody tuned the lrs


@pytest.mark.parametrize("size", list(LADDER_SIZES))
def test_each_ladder_size_trains_twenty_tokens_per_parameter(size):
    spec = study_presets()[f"ladder-{size}"]()
    run = plan_runs(spec)[0]
    cfg = run.cfg
    built = sum(p.numel() for p in build_model(cfg.model).parameters())
    assert built == parameters(*LADDER_SIZES[size][:3])
    tokens = cfg.train.steps * cfg.train.total_batch_size * cfg.data.seq_len
    assert tokens / built == pytest.approx(TOKENS_PER_PARAMETER, rel=0.002)
    assert spec.tune and spec.tune_extend > 0 and spec.tune_fraction == 0.25 and spec.seeds == [0, 1, 2]
