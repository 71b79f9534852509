"""A requested stop (what a Slurm warning signal asks for) ends training at a step boundary with a resume
checkpoint of that step; resuming there ends bitwise equal to an uninterrupted run. Unarmed, nothing stops."""

from __future__ import annotations

import pytest
from lens_testutil import one_torch_thread

from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.checkpoint import complete_checkpoints
from lowrank_lens.train import stop, train

SETS = ["train.steps=6", "train.checkpoints=2", "train.eval_every=0", "train.log_every=1", "train.resume_every=0"]


def final_weights(run_dir):
    return [p for _, p in complete_checkpoints(run_dir) if p.name != "resume"][-1].joinpath(
        "model.safetensors").read_bytes()


def test_a_requested_stop_saves_that_step_and_the_resumed_run_is_bitwise_the_same(tmp_path):
    cfg = build_config("nano", "galore", SETS)
    with one_torch_thread():
        stop.request()  # unarmed (a plain train call): ignored
        whole = train(cfg, tmp_path / "whole", run_name="r")
        try:
            stop.arm()
            stop.request()  # as if the signal came during the first step
            with pytest.raises(stop.StopRequested) as info:
                train(cfg, tmp_path / "cut", run_name="r")
        finally:
            stop.disarm()
        assert info.value.step == 1
        assert [s for s, _ in complete_checkpoints(tmp_path / "cut" / "r")] == [0, 1]  # 1 = the resume one
        resumed = train(cfg, tmp_path / "cut", run_name="r", resume=True)
    assert final_weights(resumed) == final_weights(whole)
