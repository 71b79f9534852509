"""LensCallback in a real transformers.Trainer run: per-step lens metrics in the Trainer's log history and in a
JSONL series, the same rows ll.analyze gives for the same weights, and a training that does not see it (the
weights after training and every logged loss are bitwise those of a run without the callback, with dropout on,
so a disturbed random stream would show)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import lowrank_lens as ll

ROWS = np.random.default_rng(0).integers(0, 64, size=(48, 16)).astype(np.int64)
EVAL = ROWS[:8]
SETTINGS = {"sequences": 8, "batch_size": 4, "device": "cpu"}


class Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(ROWS)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(ROWS[i])
        return {"input_ids": ids, "labels": ids.clone()}


def trained(tmp_path, callbacks) -> tuple[GPT2LMHeadModel, list[dict]]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                       resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, attn_implementation="eager"))
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                             save_strategy="no", dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=callbacks)
    trainer.train()
    return model, trainer.state.log_history


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    plain, plain_log = trained(tmp / "plain", [])
    lens = ll.LensCallback(("spectra", "update_spectra", "landscape_random"), every=2, tokens=EVAL,
                           out=tmp / "lens.jsonl", **SETTINGS)
    watched, watched_log = trained(tmp / "watched", [lens])
    return {"plain": (plain, plain_log), "watched": (watched, watched_log), "lens": lens, "file": tmp / "lens.jsonl"}


def test_the_training_does_not_see_the_callback(runs):
    (plain, plain_log), (watched, watched_log) = runs["plain"], runs["watched"]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), watched.state_dict().values(),
                                                  strict=True))
    losses = lambda log: [(h["step"], h["loss"], h["grad_norm"]) for h in log if "loss" in h]  # noqa: E731
    assert losses(plain_log) == losses(watched_log) and len(losses(plain_log)) == 6


def test_per_step_metrics_in_the_log_and_the_series(runs):
    lens_entries = [h for h in runs["watched"][1] if any(k.startswith("lens/") for k in h)]
    assert [h["step"] for h in lens_entries] == [0, 2, 4, 6]
    assert "lens/spectra/effective_rank" in lens_entries[0] and "lens/update_spectra/update_stable_rank" in \
        lens_entries[1] and "lens/landscape_random/es" in lens_entries[-1]
    series = ll.read_lens(runs["file"])
    assert sorted(series[series.metric == "spectra"]["step"]) == [0, 2, 4, 6]
    assert sorted(series[series.metric == "update_spectra"]["step"]) == [2, 4, 6]
    assert series.equals(runs["lens"].results)


def test_the_last_observation_equals_analyze_of_the_final_weights(runs):
    model = runs["watched"][0]
    series = runs["lens"].results
    options = {"landscape_random": {"directions": 2, "points": 7}}
    direct = ll.analyze({"live": model}, metrics=["spectra", "landscape_random"], tokens=EVAL, **SETTINGS, **options)
    for metric in ("spectra", "landscape_random"):
        mine = series[(series.metric == metric) & (series.step == 6)].dropna(axis=1).reset_index(drop=True)
        theirs = direct[direct.metric == metric].dropna(axis=1).reset_index(drop=True)
        pd.testing.assert_frame_equal(mine.drop(columns="step"), theirs.drop(columns="step"), check_dtype=False,
                                      check_exact=True)  # analyze calls its one checkpoint step 0


def test_any_loop_observes_every_n_steps(tmp_path):
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    lens = ll.LensCallback(("spectra",), every=3, sinks=(), **SETTINGS)
    seen = [step for step in range(7) if lens.observe(model, step) is not None]
    assert seen == [0, 3, 6] and len(lens.results) == 3
    with pytest.raises(ll.LensError, match="need out="):
        ll.LensCallback(("spectra",), sinks=("jsonl",))
    with pytest.raises(ll.LensError, match="unknown lens sink"):
        ll.LensCallback(("spectra",), sinks=("csv",), out=tmp_path / "x.jsonl")


def test_a_resumed_trainer_keeps_one_row_per_step(tmp_path):
    """Trainer.train(resume_from_checkpoint=...) with the same out file: the killed run's rows after the
    checkpoint go, the resumed weights are the next 'before', and the series equals an uninterrupted run's."""
    def run(out, steps, resume=None, save=False):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                           attn_implementation="eager"))
        lens = ll.LensCallback(("spectra", "update_spectra"), every=2, out=out, **SETTINGS)
        args = TrainingArguments(output_dir=str(tmp_path / "ckpts"), max_steps=steps, per_device_train_batch_size=4,
                                 learning_rate=1e-3, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                                 save_strategy="steps" if save else "no", save_steps=4, dataloader_num_workers=0)
        Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[lens]).train(resume_from_checkpoint=resume)

    run(tmp_path / "whole.jsonl", 6)
    run(tmp_path / "resumed.jsonl", 6, save=True)  # its rows at 6 stand for a run killed after step 6
    run(tmp_path / "resumed.jsonl", 6, resume=str(tmp_path / "ckpts" / "checkpoint-4"))
    whole, resumed = ll.read_lens(tmp_path / "whole.jsonl"), ll.read_lens(tmp_path / "resumed.jsonl")
    key = ["metric", "step"]
    assert not resumed.duplicated(key).any()
    pd.testing.assert_frame_equal(whole.sort_values(key).reset_index(drop=True),
                                  resumed.sort_values(key).reset_index(drop=True), check_exact=True)


def test_metrics_the_lens_cannot_compute_are_refused(tmp_path):
    with pytest.raises(ll.LensError, match="need other runs"):
        ll.LensCallback(("imib",), sinks=())
    with pytest.raises(ll.LensError, match="pass tokens"):
        ll.LensCallback(("landscape_random",), sinks=())
    assert [m.name for m in ll.LensCallback("spectra", sinks=()).metrics] == ["spectra"]
