"""train.lens: the LensCallback inside the toolkit's own loop. The training is bitwise the one without it, the
series in <run>/lens.jsonl holds each metric at every lens_every steps once, its rows equal ll.analyze of the
saved checkpoint, and a resumed run's series is the uninterrupted one's; under 2 gloo processes (DDP and FSDP2)
it completes without a deadlock and leaves the training unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from lens_testutil import PYTHON, cli_env

import lowrank_lens as ll
from lowrank_lens.runfolder.checkpoint import load_model_state

BASE = ("train.steps=6", "train.checkpoints=2", "train.log_every=1", "train.eval_every=0", "train.device=cpu")
LENS = ("train.lens=spectra,update_spectra", "train.lens_every=2")
NAMES = ["metric", "run", "method", "scale", "seed", "kind"]


def losses(run: ll.Run) -> list[tuple]:
    return list(run.log[["step", "loss", "grad_norm"]].itertuples(index=False, name=None))


def same_weights(a: ll.Run, b: ll.Run, step: int = 6) -> bool:
    x, y = (load_model_state(r.path / "ckpt" / f"step_{step:06d}") for r in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("lens")
    plain = ll.train_run(ll.run_config("nano", "lora", *BASE), out=root / "plain")
    watched = ll.train_run(ll.run_config("nano", "lora", *BASE, *LENS), out=root / "watched")
    return plain, watched


def test_the_loop_trains_the_same_with_the_lens(pair):
    plain, watched = pair
    assert losses(plain) == losses(watched) and same_weights(plain, watched)
    assert not (plain.path / "lens.jsonl").exists()


def test_the_series_has_each_metric_every_n_steps_once(pair):
    series = ll.read_lens(pair[1].path / "lens.jsonl")
    assert sorted(series[series.metric == "spectra"]["step"]) == [0, 2, 4, 6]
    assert sorted(series[series.metric == "update_spectra"]["step"]) == [2, 4, 6]


def test_a_row_equals_analyze_of_the_saved_checkpoint(pair):
    """The lens on the live LoRA model (its own parameterization) = ll.analyze of the step-6 checkpoint on the
    same validation rows."""
    run = pair[1]
    series = ll.read_lens(run.path / "lens.jsonl")
    mine = series[(series.metric == "spectra") & (series.step == 6)].drop(columns=NAMES).dropna(axis=1)
    batch = run.config.train.eval_batch_size or run.config.train.micro_batch_size
    theirs = ll.analyze(run, metrics="spectra", steps=[6], device="cpu", sequences=64, batch_size=batch)
    theirs = theirs.drop(columns=NAMES).dropna(axis=1)
    pd.testing.assert_frame_equal(mine.reset_index(drop=True), theirs.reset_index(drop=True), check_dtype=False,
                                  check_exact=True)


def test_a_resumed_run_has_the_uninterrupted_series(tmp_path):
    """Checkpoints at 0, 2, 4, 6; the run 'killed' after its last observation (step 6's checkpoint removed, its
    rows left in lens.jsonl), resumed from step 4: the killed rows go, step 4's weights are the next 'before',
    and the series equals the uninterrupted one's. (A run resumed between two observations loses the first
    update row after it: the weights of its last observation are not saved.)"""
    sets = (*BASE, *LENS, "train.checkpoints=3")
    whole = ll.train_run(ll.run_config("nano", "lora", *sets), out=tmp_path / "whole")
    copy = tmp_path / "killed" / whole.name
    shutil.copytree(whole.path, copy)
    shutil.rmtree(copy / "ckpt" / "step_000006")
    resumed = ll.train_run(ll.run_config("nano", "lora", *sets), out=copy.parent, resume=True)
    a, b = ll.read_lens(whole.path / "lens.jsonl"), ll.read_lens(resumed.path / "lens.jsonl")
    key = ["metric", "step"]
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True),
                                  check_exact=True)


def test_a_run_killed_before_its_rows_observes_its_resumed_step(tmp_path):
    """Killed after step 4's checkpoint but before step 4's rows were written: the resumed run observes step 4
    (its weights are the checkpoint's), so no observation step is lost; the update into step 4 is, because the
    weights of step 2 were not saved."""
    sets = (*BASE, *LENS, "train.checkpoints=3")
    whole = ll.train_run(ll.run_config("nano", "lora", *sets), out=tmp_path / "whole")
    copy = tmp_path / "killed" / whole.name
    shutil.copytree(whole.path, copy)
    shutil.rmtree(copy / "ckpt" / "step_000006")
    lines = (copy / "lens.jsonl").read_text().splitlines()
    (copy / "lens.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= 2))
    resumed = ll.read_lens(ll.train_run(ll.run_config("nano", "lora", *sets), out=copy.parent, resume=True).path)
    assert sorted(resumed[resumed.metric == "spectra"]["step"]) == [0, 2, 4, 6]
    assert sorted(resumed[resumed.metric == "update_spectra"]["step"]) == [2, 6]
    full = ll.read_lens(whole.path)
    pick = lambda df: df[(df.metric == "spectra") & (df.step == 4)].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(pick(resumed), pick(full), check_exact=True)


def test_an_unknown_lens_metric_is_one_line_before_anything_is_written(tmp_path):
    with pytest.raises(ll.LensError, match="unknown metric"):
        ll.train_run(ll.run_config("nano", "lora", *BASE, "train.lens=spectrum"), out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
DRIVER = Path(__file__).with_name("train_many.py")


@pytest.fixture(scope="module")
def two_process(tmp_path_factory) -> Path:
    """With and without the lens, under DDP and FSDP2, on 2 gloo processes: one torchrun (one start-up)."""
    out = tmp_path_factory.mktemp("two")
    runs = [[str(out / parallel / name), "lora", [*BASE, f"train.parallel={parallel}", *extra]]
            for parallel in ("ddp", "fsdp") for name, extra in (("plain", []), ("watched", list(LENS)))]
    res = subprocess.run([*TORCHRUN, str(DRIVER), "--plan", json.dumps(runs)],
                         env={**cli_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_processes_observe_once_and_train_the_same(parallel, two_process):
    plain, watched = (ll.load_run(two_process / parallel / name / "nano-lora-seed0") for name in ("plain", "watched"))
    assert '"world_size": 2' in (watched.path / "config.json").read_text()
    assert losses(plain) == losses(watched) and same_weights(plain, watched)
    series = ll.read_lens(watched.path / "lens.jsonl")
    assert sorted(series[series.metric == "spectra"]["step"]) == [0, 2, 4, 6]  # rank 0 only: each step once
    assert sorted(series[series.metric == "update_spectra"]["step"]) == [2, 4, 6]
