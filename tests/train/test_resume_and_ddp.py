"""Exact resume after a real process kill, and 2-process DDP (gloo) against 1 process — for every method."""

import os
import signal
import subprocess
import time

import pytest
import torch
from lens_testutil import PYTHON, cli_env

from lowrank_lens.methods import method_names
from lowrank_lens.train.checkpoint import complete_checkpoints, load_model_state
from lowrank_lens.train.logs import read_log

STEPS = 16
NANO = ["--preset", "nano", "--device", "cpu", "--steps", str(STEPS), "--set", "train.checkpoints=2",
        "--set", "train.log_every=1"]
ENV = {**cli_env(), "OMP_NUM_THREADS": "1"}
_REFERENCE: dict = {}


def _train_cmd(method, out, *extra):
    return [PYTHON, "-m", "lowrank_lens", "train", *NANO, "--method", method, "--out", str(out), *extra]


def _run(cmd):
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(run_dir, "train")]


def _reference(method, tmp_path_factory):
    """One uninterrupted 1-process run per method, shared by both tests."""
    if method not in _REFERENCE:
        out = tmp_path_factory.mktemp(f"ref-{method}")
        _run(_train_cmd(method, out))
        _REFERENCE[method] = out / f"nano-{method}-seed0"
    return _REFERENCE[method]


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_killed_run_resumes_to_identical_weights(method, tmp_path, tmp_path_factory):
    full = _reference(method, tmp_path_factory)
    killed = tmp_path / f"nano-{method}-seed0"
    extra = ("--set", "train.resume_every=2")
    proc = subprocess.Popen(_train_cmd(method, tmp_path, *extra), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(step >= 6 for step, _ in complete_checkpoints(killed)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # a real kill: no cleanup, no exception handlers
    proc.wait()
    steps = [s for s, _ in complete_checkpoints(killed)]
    assert STEPS not in steps and max(steps) >= 6

    res = _run(_train_cmd(method, tmp_path, *extra, "--resume"))
    assert "resuming" in res.stderr
    assert _losses(killed) == _losses(full)  # bitwise: same floats, same steps, no repeats
    a = load_model_state(full / "ckpt" / f"step_{STEPS:06d}")
    b = load_model_state(killed / "ckpt" / f"step_{STEPS:06d}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_two_gloo_processes_match_one(method, tmp_path, tmp_path_factory):
    one = _losses(_reference(method, tmp_path_factory))
    _run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lowrank_lens",
          "train", *NANO, "--method", method, "--out", str(tmp_path)])
    run_dir = tmp_path / f"nano-{method}-seed0"
    two = _losses(run_dir)
    assert [s for s, *_ in one] == [s for s, *_ in two] == list(range(1, STEPS + 1))
    for (_, la, ga), (_, lb, gb) in zip(one, two, strict=True):
        assert lb == pytest.approx(la, rel=1e-4) and gb == pytest.approx(ga, rel=1e-3)
    assert '"world_size": 2' in (run_dir / "config.json").read_text()
