"""A nano full-rank run end to end: the run directory, falling validation loss, both perplexities."""

import json
import math

import numpy as np
import pytest
import torch

from lowrank_lens.data import to_model_inputs
from lowrank_lens.methods import get_method
from lowrank_lens.model import build_model
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.checkpoint import complete_checkpoints, load_model_state
from lowrank_lens.runfolder.files import load_run_config
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train import train


@pytest.fixture(scope="module")
def nano_run(tmp_path_factory):
    cfg = build_config("nano", "full-rank", ["train.steps=30", "train.checkpoints=3", "train.log_every=5"])
    return cfg, train(cfg, tmp_path_factory.mktemp("runs"))


def test_run_directory_is_self_describing(nano_run):
    cfg, run_dir = nano_run
    assert run_dir.name == "nano-full-rank-seed0"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["provenance"]["versions"]["torch"] and "git_sha" in saved["provenance"]
    assert saved["data_fingerprint"] and load_run_config(run_dir) == cfg
    assert [s for s, _ in complete_checkpoints(run_dir)] == [0, 10, 20, 30]
    meta = json.loads((run_dir / "ckpt" / "step_000030" / "meta.json").read_text())
    assert meta["method"] == "full-rank" and meta["step"] == 30 and meta["tokens"] > 0
    assert meta["memory"]["optimizer_state_bytes"] > 0 and meta["val"]["val_ppl"] > 1
    assert not list(run_dir.rglob(".tmp*")), "temporary files were left behind"


def test_validation_loss_falls(nano_run):
    _, run_dir = nano_run
    vals = read_log(run_dir, "val")
    assert [v["step"] for v in vals] == [0, 10, 20, 30]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 0.5, vals
    assert vals[0]["val_loss"] == pytest.approx(math.log(512), abs=0.3)  # uniform-ish at init
    train_rows = read_log(run_dir, "train")
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert all({"loss", "lr", "grad_norm", "tok_per_s", "tokens"} <= set(r) for r in train_rows)


def test_both_perplexity_definitions_match_a_direct_computation(nano_run):
    cfg, run_dir = nano_run
    rows = np.load(run_dir / "val_tokens.npy")
    model = build_model(cfg.model)
    get_method(cfg.method)(cfg.method_cfg, cfg).prepare_model(model)
    model.load_state_dict(load_model_state(run_dir / "ckpt" / "step_000030"))
    model.eval()
    bs = cfg.train.eval_batch_size or cfg.train.micro_batch_size
    nll_sum, n_sum, batch_means = 0.0, 0, []
    with torch.no_grad():
        for i in range(0, len(rows), bs):
            ids, labels = to_model_inputs(rows[i:i + bs], pad_id=0)
            out = model(input_ids=ids, labels=labels)  # HF's own token-mean loss per batch
            n = int((labels[:, 1:] != -100).sum())
            nll_sum += out.loss.item() * n
            n_sum += n
            batch_means.append(out.loss.item())
    val = read_log(run_dir, "val")[-1]
    assert val["val_loss"] == pytest.approx(nll_sum / n_sum, rel=1e-5)
    # The reference repos divide by (number of batches + 1) (docs/methods.md §1.4).
    assert val["val_loss_reference"] == pytest.approx(sum(batch_means) / (len(batch_means) + 1), rel=1e-5)
    assert val["val_ppl_reference"] < val["val_ppl"]
