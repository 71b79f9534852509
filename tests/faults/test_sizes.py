"""Fault injection (issue 25 §1): sizes are checked before anything is allocated.

Model sizes no real run needs are refused when the config resolves (before a tokenizer, an embedding or a
layer table is built); sizes within the bounds that cannot fit this machine are refused by the memory
estimate before any data or weight exists, in one line naming the fields, the estimate and the memory; a
study of 10 000 seeds plans without building 10 000 configs.
"""

from __future__ import annotations

import json

import pytest
from lens_testutil import run_cli

from lowrank_lens.config import MODEL_LIMITS
from lowrank_lens.errors import LensError
from lowrank_lens.presets import build_config
from lowrank_lens.train.fits import check_fits, estimate

PAST_LIMITS = [(f"model.{name}", 2 * limit) for name, limit in MODEL_LIMITS.items()] + [
    ("model.vocab_size", 2_000_000_000), ("model.vocab_size", 40_000_000), ("model.num_layers", 100_000_000)]


def _one_line(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


@pytest.mark.parametrize(("key", "value"), PAST_LIMITS)
def test_a_model_size_no_run_needs_is_refused_when_the_config_resolves(key, value, capsys, monkeypatch):
    code, err = run_cli(["config", "--preset", "nano", "--set", f"{key}={value}"], capsys, monkeypatch)
    _one_line(code, err, key)


# Within the bounds, but past any machine this suite runs on (each needs far more than 1 TiB).
TOO_BIG = [
    (["model.vocab_size=1000000", "model.hidden_size=65536", "model.num_heads=64"], "model.vocab_size 1000000"),
    (["model.num_layers=1000", "model.hidden_size=8192", "model.intermediate_size=20000", "model.num_heads=64"],
     "model.num_layers 1000"),
    (["train.micro_batch_size=65536", "train.total_batch_size=65536", "model.vocab_size=262144"], "(logits)"),
]


@pytest.mark.parametrize(("sets", "blamed"), TOO_BIG)
def test_a_run_that_cannot_fit_is_refused_before_anything_is_built(sets, blamed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOWRANK_LENS_CACHE", str(tmp_path / "cache"))
    args = ["train", "--preset", "nano", "--method", "full-rank", "--out", str(tmp_path / "runs")]
    for s in sets:
        args += ["--set", s]
    code, err = run_cli(args, capsys, monkeypatch)
    _one_line(code, err, "needs at least", "available", blamed)
    assert not list((tmp_path / "runs").iterdir())  # no run folder holding only its marker and lock
    assert not (tmp_path / "cache").exists()  # no tokenizer was trained, no rows were cut


def test_the_estimate_is_a_lower_bound_of_what_training_measures(nano_run):
    """The estimate's parameters, gradients and optimizer state are the method's closed form, which
    benchmarks/bench_memory.py checks against measured tensors; here: never above what the run measured."""
    from lowrank_lens.runfolder.checkpoint import complete_checkpoints, read_meta
    from lowrank_lens.runfolder.files import load_run_config

    cfg = load_run_config(nano_run)
    need = estimate(cfg)
    measured = read_meta(complete_checkpoints(nano_run)[-1][1])["memory"]
    assert need.parts["parameters"] <= measured["param_bytes"] + measured["buffer_bytes"]
    assert need.parts["gradients"] <= measured["grad_bytes"]
    assert need.parts["optimizer state"] == measured["optimizer_state_bytes"]


def test_fsdp_shards_divide_what_each_process_holds():
    cfg = build_config("nano", "full-rank", ["train.parallel=fsdp"])
    whole, shard = estimate(cfg, shards=1), estimate(cfg, shards=4)
    assert shard.parts["optimizer state"] == whole.parts["optimizer state"] // 4
    assert shard.parts["activations of one micro-batch"] == whole.parts["activations of one micro-batch"]


def test_the_check_compares_with_the_memory_the_device_has(monkeypatch):
    import torch

    from lowrank_lens import machine

    cfg = build_config("nano", "full-rank")
    monkeypatch.setattr(machine, "host_available", lambda: estimate(cfg).total - 1)
    with pytest.raises(LensError, match="this machine has"):
        check_fits(cfg, torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(machine, "host_available", lambda: estimate(cfg).total)
    check_fits(cfg, torch.device("cpu"))  # exactly enough
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks of one torchrun share the host's memory
    with pytest.raises(LensError, match="for each of 2 processes"):
        check_fits(cfg, torch.device("cpu"))
    monkeypatch.setenv(machine.SKIP_ENV, "1")
    check_fits(cfg, torch.device("cpu"))


def _study_file(tmp_path, seeds: int):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"name": "big", "methods": ["full-rank", "galore"], "scales": ["nano"],
                                "seeds": list(range(seeds))}))
    return path


def test_a_study_of_ten_thousand_seeds_plans_without_building_each_config(tmp_path, monkeypatch):
    from lowrank_lens import presets
    from lowrank_lens.study.runner import describe_plan
    from lowrank_lens.study.spec_files import load_spec

    builds = []
    real = presets.build_config
    monkeypatch.setattr(presets, "build_config", lambda *a, **k: builds.append(a) or real(*a, **k))
    spec = load_spec(_study_file(tmp_path, 10_000))
    text = describe_plan(spec, tmp_path / "out")
    assert len(text.splitlines()) > 2 * 20_000  # a table row and a command per run
    assert "nano-galore-seed9999" in text
    assert len(builds) <= 4, len(builds)  # one per (scale, method), twice at most (load, then the plan)


def test_a_seed_planned_lazily_has_the_config_its_own_build_gives(tmp_path):
    from lowrank_lens.study.spec import plan_runs
    from lowrank_lens.study.spec_files import load_spec

    spec = load_spec(_study_file(tmp_path, 3))
    for run in plan_runs(spec, tuned={("nano", "galore"): 0.0123}):
        assert run.cfg.to_dict() == _with_note(build_config(run.scale, run.method, list(run.overrides)), run)
        assert run.cfg.train.seed == run.seed
        shape, cfg = run.shape.to_dict(), run.cfg.to_dict()
        for d in (shape, cfg):
            d["train"].pop("seed")
            d.pop("notes")
        assert shape == cfg  # what --dry-run reads from the shape is the run's own


def _with_note(cfg, run):
    cfg.notes.extend(run.notes)
    return cfg.to_dict()
