import errno
import json

import pytest
import torch

from lowrank_lens.errors import LensError
from lowrank_lens.runfolder import checkpoint as ck


def _save(path, value=1.0, step=1):
    state = {"w": torch.full((4, 4), value)}
    resume = {"step": step, "tokens": 0, "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []},
              "rng_cpu": torch.get_rng_state(), "rng_cuda": []}  # every key Trainer.save writes
    return ck.save_checkpoint(path, state, {"step": step}, resume)


class Evil:  # any non-tensor object a pickle could smuggle in
    pass


def test_checkpoint_steps_include_zero_and_final():
    assert ck.checkpoint_steps(10_000, 10) == [0] + list(range(1000, 10_001, 1000))
    assert ck.checkpoint_steps(20, 4) == [0, 5, 10, 15, 20]


def test_round_trip_without_unpickling(tmp_path):
    path = _save(tmp_path / "ckpt" / "step_000001")
    assert torch.equal(ck.load_model_state(path, verify=True)["w"], torch.ones(4, 4))
    assert ck.load_resume_state(path)["optimizer"]["state"][0]["exp_avg"].sum() == 3
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 1 and len(meta["model_sha256"]) == 64
    assert ck.complete_checkpoints(tmp_path) == [(1, path)]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = _save(tmp_path / "ckpt" / "step_000001")

    def full_disk(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(LensError, match="disk full while saving checkpoint.*--resume"):
        _save(tmp_path / "ckpt" / "step_000002", value=2.0, step=2)
    # Nothing half-written: only the good checkpoint remains, and it still loads.
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step_000001"]
    assert ck.complete_checkpoints(tmp_path) == [(1, good)]
    assert torch.equal(ck.load_model_state(good, verify=True)["w"], torch.ones(4, 4))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = _save(tmp_path / "step_000001")
    blob = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(LensError, match="corrupt"):
        ck.load_model_state(path, verify=True)
    with pytest.raises(LensError, match="does not match its recorded hash"):
        ck.load_model_state(path)  # verifying is the default
    with pytest.raises(LensError, match="corrupt or truncated"):
        ck.load_model_state(path, verify=False)
    (path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LensError, match="corrupt or truncated state.pt"):
        ck.load_resume_state(path)


def test_arbitrary_pickles_are_refused(tmp_path):
    path = _save(tmp_path / "step_000001")
    torch.save({"x": Evil()}, path / "state.pt")
    with pytest.raises(LensError):
        ck.load_resume_state(path)
