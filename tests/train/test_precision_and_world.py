"""The bf16 precisions train, and a batch that does not split over the processes is a clear error."""

import math

import pytest
import torch

from lowrank_lens.distributed import DistEnv
from lowrank_lens.errors import LensError
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train import run as run_mod


def test_total_batch_must_split_over_processes(tmp_path):
    cfg = build_config("nano", "full-rank", ["train.total_batch_size=8", "train.micro_batch_size=8"])
    with pytest.raises(LensError, match=r"not divisible by micro_batch_size 8 x 2 processes"):
        run_mod._train(cfg, tmp_path / "run", resume=False, env=DistEnv(world=2))
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("precision, dtype", [("bf16-pure", torch.bfloat16), ("bf16-mixed", torch.float32)])
def test_bf16_precisions_train(precision, dtype, tmp_path):
    cfg = build_config("nano", "full-rank", [f"train.precision={precision}", "train.steps=12", "train.checkpoints=1"])
    run_dir = run_mod.train(cfg, tmp_path)
    vals = read_log(run_dir, "val")
    assert all(math.isfinite(v["val_loss"]) for v in vals) and vals[-1]["val_loss"] < vals[0]["val_loss"]
    from lowrank_lens.runfolder.checkpoint import load_model_state

    state = load_model_state(run_dir / "ckpt" / "step_000012")
    assert state["model.embed_tokens.weight"].dtype == dtype  # pure bf16 keeps bf16 weights; mixed keeps fp32
