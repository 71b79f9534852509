"""A study mixing a trained run and an imported series ([[imported]], study/imported.py): the train stage
imports the series (once), every stage treats it like a trained run, and the report names it by its label.

The imported series is a GPT-2 of the nano shape (hidden 64, 2 blocks, vocab 512) with the nano tokenizer,
evaluated on given rows, so activation similarity compares it with the trained full-rank baseline block by
block; IMIB between the two architectures is skipped with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lowrank_lens.analysis.tables import read_csv
from lowrank_lens.data import build_data
from lowrank_lens.presets import build_config
from lowrank_lens.study.runner import run_study
from lowrank_lens.study.spec_files import load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "imports"))
from series_util import write_series  # noqa: E402

TRAINING = ["train.steps=12", "train.checkpoints=3", "train.eval_every=12"]
QUICK = ["landscape_random.directions=2", "landscape_random.points=5", "landscape_pca.k=2", "landscape_pca.points=5",
         "trajectory_pca.points=5", "interpolation.points=5", "imib.points=5", "curvature.lanczos_iters=4",
         "curvature.hutchinson_probes=3"]


@pytest.mark.slow
def test_a_study_of_a_trained_and_an_imported_run_ends_in_its_report(tmp_path):
    nano = build_config("nano", "full-rank", TRAINING)
    tokenizer = build_data(nano.data, nano.model.vocab_size).tokenizer  # trained elsewhere with our tokenizer
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128))
    series = write_series(tmp_path / "elsewhere", gpt2, tokenizer, steps=(0, 6, 12))
    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).integers(0, 512, size=(16, 32)).astype(np.int32))
    study_file = tmp_path / "files" / "mixed.toml"
    study_file.parent.mkdir()
    study_file.write_text(f"""
name = "mixed"
methods = ["full-rank"]
scales = ["nano"]
seeds = [0]
overrides = {json.dumps(TRAINING)}
metric_overrides = {json.dumps(QUICK)}
sequences = 8
eval_batch_size = 8
downstream_tasks = []

[[imported]]
path = "../elsewhere"
method = "gpt2-elsewhere"
scale = "nano"
seed = 0
tokens = "{rows}"
""")
    spec = load_spec(study_file)
    assert spec.imported[0]["path"] == str(series.resolve())  # relative to the study file
    report = run_study(spec, tmp_path / "study")
    study = tmp_path / "study"
    record = json.loads((study / "study.json").read_text())
    assert record["runs"] == ["nano-full-rank-seed0", "nano-gpt2-elsewhere-seed0"]
    imported = study / "runs" / "nano-gpt2-elsewhere-seed0"
    assert json.loads((imported / "config.json").read_text())["imported"]["label"] == "gpt2-elsewhere"

    sim = [r for r in read_csv(study / "analysis" / "activation_similarity.csv") if r["method"] == "gpt2-elsewhere"]
    assert sim and all(r["other_method"] == "full-rank" for r in sim)
    imib = read_csv(study / "analysis" / "imib.csv")
    assert imib and all("different parameters" in str(r.get("skipped")) for r in imib)
    spectra = {r["method"] for r in read_csv(study / "analysis" / "spectra.csv")}
    assert spectra == {"full-rank", "gpt2-elsewhere"}
    page = Path(report).read_text()
    assert "gpt2-elsewhere" in page and "nano-gpt2-elsewhere-seed0" in page

    inode = (imported / "ckpt" / "step_000012" / "model.safetensors").stat().st_ino
    run_study(load_spec(study_file), study, ("train",))  # a second train stage imports nothing
    assert (imported / "ckpt" / "step_000012" / "model.safetensors").stat().st_ino == inode
