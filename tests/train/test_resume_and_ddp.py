"""Exact resume after a real process kill, and 2-process DDP and FSDP2 (gloo) against 1 process — for every
method; an FSDP2 run resumed across world sizes (2 -> 1 -> 2).

The 1-process references, the 2-process runs and the resumptions of the killed runs are each trained for
every method in one interpreter (train_many.py), so the suite pays torch's start-up once per group and not
once per run; the kills are real, one process per method, each forked from one interpreter (kill_many.py)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from lens_testutil import PYTHON, cli_env

from lowrank_lens.methods import method_names
from lowrank_lens.runfolder.checkpoint import complete_checkpoints, load_model_state
from lowrank_lens.runfolder.log import read_log

STEPS = 16
NANO = ["--preset", "nano", "--device", "cpu", "--steps", str(STEPS), "--set", "train.checkpoints=2",
        "--set", "train.log_every=1"]
SETS = [f"train.steps={STEPS}", "train.device=cpu", "train.checkpoints=2", "train.log_every=1"]
"""The overrides the CLI makes of NANO (cli_options.resolve_config: --steps, then --device, then the --set's)."""
ENV = {**cli_env(), "OMP_NUM_THREADS": "1"}
DRIVER = Path(__file__).with_name("train_many.py")
KILLER = Path(__file__).with_name("kill_many.py")
KILL_AT_ONCE = 4
"""Runs trained (and killed) side by side, each a process forked from one interpreter (kill_many.py): 4
single-threaded processes on 2 cores still reach step 6 long before the last step."""
TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _train_cmd(method, out, *extra):
    return [PYTHON, "-m", "lowrank_lens", "train", *NANO, "--method", method, "--out", str(out), *extra]


def _many(out, sets, *extra, launcher=(PYTHON,)):
    return [*launcher, str(DRIVER), str(out), ",".join(method_names()), json.dumps(SETS + list(sets)), *extra]


def _run(cmd):
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(run_dir, "train")]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Path:
    """One uninterrupted 1-process run per method (folder of nano-<method>-seed0 runs)."""
    out = tmp_path_factory.mktemp("ref")
    _run(_many(out, []))
    return out


@pytest.fixture(scope="module")
def two_process(tmp_path_factory) -> Path:
    """Every method on 2 gloo processes, under DDP (<out>/ddp) and FSDP2 (<out>/fsdp), in one torchrun (one
    start-up of its two interpreters)."""
    out = tmp_path_factory.mktemp("two")
    runs = [[str(out / parallel), method, [*SETS, f"train.parallel={parallel}"]]
            for parallel in ("ddp", "fsdp") for method in method_names()]
    _run([*TORCHRUN, str(DRIVER), "--plan", json.dumps(runs)])
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory, references) -> Path:
    """Each method's run killed (SIGKILL, no cleanup) after its step-6 resume checkpoint, then all resumed
    by one process."""
    out = tmp_path_factory.mktemp("killed")
    extra = ["train.resume_every=2"]
    res = _run([PYTHON, str(KILLER), str(out), ",".join(method_names()), json.dumps(SETS + extra), "6",
                str(KILL_AT_ONCE)])
    left = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(left) == sorted(method_names())
    for method, steps in left.items():
        assert STEPS not in steps and max(steps) >= 6, (method, steps)
    res = _run(_many(out, extra, "--resume"))
    assert res.stderr.count("resuming") == len(method_names()), res.stderr[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_killed_run_resumes_to_identical_weights(method, references, killed):
    full, resumed = references / f"nano-{method}-seed0", killed / f"nano-{method}-seed0"
    assert _losses(resumed) == _losses(full)  # bitwise: same floats, same steps, no repeats
    a = load_model_state(full / "ckpt" / f"step_{STEPS:06d}")
    b = load_model_state(resumed / "ckpt" / f"step_{STEPS:06d}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close_curves(one, two):
    assert [s for s, *_ in one] == [s for s, *_ in two] == list(range(1, STEPS + 1))
    for (_, la, ga), (_, lb, gb) in zip(one, two, strict=True):
        assert lb == pytest.approx(la, rel=1e-4) and gb == pytest.approx(ga, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_two_gloo_processes_match_one(method, references, two_process):
    run_dir = two_process / "ddp" / f"nano-{method}-seed0"
    _close_curves(_losses(references / f"nano-{method}-seed0"), _losses(run_dir))
    assert '"world_size": 2' in (run_dir / "config.json").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names())
def test_fsdp_two_gloo_processes_match_one(method, references, two_process):
    """FSDP2 (every parameter, gradient and moment sharded over 2 gloo ranks) follows the 1-process curve.
    Tolerance as DDP's, and for the same reason: the gradient reduction sums the ranks' partial gradients
    in another order than one process's backward (fp32 rounding, ~1e-7 relative per step), which Adam's
    normalisation carries through 16 steps; a wrong shard, scale or projection moves the loss by > 1e-2."""
    ref, run_dir = references / f"nano-{method}-seed0", two_process / "fsdp" / f"nano-{method}-seed0"
    _close_curves(_losses(ref), _losses(run_dir))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["provenance"]["world_size"] == 2 and config["train"]["parallel"] == "fsdp"
    # the checkpoint holds whole tensors in the one-process format: same keys and shapes as the reference
    a, b = (load_model_state(d / "ckpt" / f"step_{STEPS:06d}") for d in (ref, run_dir))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5) for k in a)
    # memory is per rank: each rank stores about half of the trainable parameters and their gradients
    mem_one, mem_two = (json.loads((d / "ckpt" / f"step_{STEPS:06d}" / "meta.json").read_text())["memory"]
                        for d in (ref, run_dir))
    assert mem_two["sharded"] and mem_two["world_size"] == 2
    assert 0.45 < mem_two["grad_bytes"] / mem_one["grad_bytes"] < 0.55
    assert mem_two["optimizer_state_bytes"] < mem_one["optimizer_state_bytes"]


def _keep_until(run_dir, step):
    """Drop the checkpoints after `step`, as if the run had been stopped there."""
    for s, path in complete_checkpoints(run_dir):
        if s > step:
            shutil.rmtree(path)


def _fsdp_cmd(out, method, *extra):
    return [*TORCHRUN, "-m", "lowrank_lens", "train", *NANO, "--method", method, "--out", str(out),
            "--set", "train.parallel=fsdp", *extra]


@pytest.mark.slow
def test_fsdp_run_resumes_across_world_sizes(tmp_path, references):
    """2 processes (FSDP2) -> 1 process -> 2 processes (FSDP2), each resuming from the other's checkpoint
    through the CLI, ends where the uninterrupted 1-process run ends (to fp32 rounding, as above). GaLore:
    its optimizer keeps replicated projected moments beside sharded plain ones, the harder state to carry
    across world sizes (ReLoRA's sharded merges are in the curve test: it resets every 4 steps)."""
    method = "galore"
    ref, run_dir = references / f"nano-{method}-seed0", tmp_path / f"nano-{method}-seed0"
    ckpts = ("--set", "train.checkpoints=4")  # steps 4, 8, 12, 16
    _run(_fsdp_cmd(tmp_path, method, *ckpts))
    _keep_until(run_dir, 4)
    res = _run(_train_cmd(method, tmp_path, *ckpts, "--resume"))  # 1 process from the 2-process step 4
    assert "resuming" in res.stderr
    _keep_until(run_dir, 8)
    _run(_fsdp_cmd(tmp_path, method, *ckpts, "--resume"))  # 2 processes from the 1-process step 8
    one, mixed = _losses(ref), _losses(run_dir)
    assert [s for s, *_ in mixed] == list(range(1, STEPS + 1))  # no step repeated or missing
    for (_, la, _), (_, lb, _) in zip(one, mixed, strict=True):
        assert lb == pytest.approx(la, rel=1e-4)
    a, b = (load_model_state(d / "ckpt" / f"step_{STEPS:06d}") for d in (ref, run_dir))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5) for k in a)
