"""Exact resume after a real process kill, and 2-process DDP (gloo) against 1 process."""

import os
import signal
import subprocess
import time

import pytest
import torch
from lens_testutil import PYTHON, cli_env

from lowrank_lens.train.checkpoint import complete_checkpoints, load_model_state
from lowrank_lens.train.logs import read_log

NANO = ["--preset", "nano", "--device", "cpu", "--steps", "40", "--set", "train.checkpoints=4",
        "--set", "train.log_every=1"]


def _train_cmd(out, *extra):
    return [PYTHON, "-m", "lowrank_lens", "train", *NANO, "--out", str(out), *extra]


def _run(cmd, env=None):
    res = subprocess.run(cmd, env=env or cli_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(run_dir, "train")]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    _run(_train_cmd(tmp_path / "full"), env)
    full = tmp_path / "full" / "nano-full-rank-seed0"

    killed = tmp_path / "killed" / "nano-full-rank-seed0"
    proc = subprocess.Popen(_train_cmd(tmp_path / "killed", "--set", "train.resume_every=3"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(step >= 12 for step, _ in complete_checkpoints(killed)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # a real kill: no cleanup, no exception handlers
    proc.wait()
    steps = [s for s, _ in complete_checkpoints(killed)]
    assert 40 not in steps and max(steps) >= 12

    res = _run(_train_cmd(tmp_path / "killed", "--set", "train.resume_every=3", "--resume"), env)
    assert "resuming" in res.stderr
    assert _losses(killed) == _losses(full)  # bitwise: same floats, same steps, no repeats
    a = load_model_state(full / "ckpt" / "step_000040")
    b = load_model_state(killed / "ckpt" / "step_000040")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    _run(_train_cmd(tmp_path / "one"), env)
    _run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lowrank_lens",
          "train", *NANO, "--out", str(tmp_path / "two")], env)
    one = _losses(tmp_path / "one" / "nano-full-rank-seed0")
    two = _losses(tmp_path / "two" / "nano-full-rank-seed0")
    assert [s for s, *_ in one] == [s for s, *_ in two] == list(range(1, 41))
    for (_, la, ga), (_, lb, gb) in zip(one, two, strict=True):
        assert lb == pytest.approx(la, rel=1e-4) and gb == pytest.approx(ga, rel=1e-3)
    cfg_two = (tmp_path / "two" / "nano-full-rank-seed0" / "config.json").read_text()
    assert '"world_size": 2' in cfg_two
