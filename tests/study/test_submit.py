"""The study as submitit jobs: through a real one-node Slurm (scripts/local_slurm.sh, started here) and
through submitit's LocalExecutor; a training task signalled as Slurm does before a preemption stops at a step,
is requeued and resumes there, ending bitwise equal to an uninterrupted run; `--status` from the folder alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lens_testutil import one_torch_thread

from lowrank_lens.errors import LensError
from lowrank_lens.runfolder.checkpoint import complete_checkpoints
from lowrank_lens.runfolder.files import load_run_config
from lowrank_lens.study.spec import StudySpec, plan_runs
from lowrank_lens.study.status import study_status
from lowrank_lens.study.submit import SubmitOptions
from lowrank_lens.study.task_records import mark
from lowrank_lens.study.tune import tuned_lrs
from lowrank_lens.train import train

ROOT = Path(__file__).resolve().parents[2]
LONG_STEPS = 400  # ~10 s at nano on one core: long enough to signal the task while it trains


def spec_file(tmp_path: Path, steps: int, methods=("full-rank", "galore"), **tune) -> Path:
    spec = dict(name="sub", methods=list(methods), scales=["nano"], seeds=[0], metrics=["spectra"],
                overrides=[f"train.steps={steps}", "train.checkpoints=2", "train.eval_every=0", "train.log_every=1",
                           "train.resume_every=0"],
                downstream_tasks=[], sequences=8, eval_batch_size=8, **tune)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(spec))
    return path


def lens(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "lowrank_lens", *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def final_weights(run_dir: Path) -> bytes:
    (_, last), = [(s, p) for s, p in complete_checkpoints(run_dir) if p.name != "resume"][-1:]
    return (last / "model.safetensors").read_bytes()


@pytest.fixture(scope="session")
def local_slurm() -> None:
    """A one-node Slurm on localhost: the repository's script installs (Debian packages) and starts it."""
    ok = shutil.which("sinfo") and "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                                             text=True).stdout
    if not ok:
        res = subprocess.run(["bash", str(ROOT / "scripts" / "local_slurm.sh"), "up"], capture_output=True,
                             text=True, timeout=1500)
        if res.returncode != 0:
            pytest.fail(f"a local Slurm is needed for this test: `sudo scripts/local_slurm.sh up` failed:\n"
                        f"{res.stdout[-1500:]}{res.stderr[-1500:]}")


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def train_steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.strip().endswith("}") and '"kind": "train"' in line]


def job_state(job_id: str) -> str:
    """Slurm's state of one job (array task ids like 12_1 included), '' once it has left the queue."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[0] if out.strip() else ""


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return {line.split("_")[0] for line in out.split()}


@pytest.mark.slow
@pytest.mark.slurm
def test_study_through_slurm_requeues_a_signalled_task_and_ends_bitwise_equal(tmp_path, local_slurm):
    # With the tune stage: 2 proxy runs of 8 steps as their own array, then one round past an edge (an array
    # after it, one task per method), all of which training waits for (afterok). One method: each Slurm task
    # is an interpreter start (seconds of imports), and one method shows every stage.
    path = spec_file(tmp_path, LONG_STEPS, methods=("galore",), tune=True, tune_grid=[1, 2], tune_fraction=0.02,
                     tune_extend=1)
    spec = StudySpec(**json.loads(path.read_text()))
    galore = next(r for r in plan_runs(spec) if r.method == "galore")

    folder = tmp_path / "study"
    res = lens("study", str(path), "--out", str(folder), "--executor", "slurm", "--analysis-tasks", "2",
               "--time-min", "30")
    assert "--status" in res.stdout
    submitted = json.loads((folder / "jobs" / "submitted.json").read_text())["jobs"]
    assert set(submitted) == {"tune", "train", "analyze", "report"} and all(submitted.values())

    run_dir = folder / "runs" / galore.run_name
    wait_for(lambda: len(train_steps_logged(run_dir)) >= 5, 240, "the galore run to train 5 steps")
    record = json.loads((folder / "jobs" / "status" / f"train__{galore.run_name}.json").read_text())
    assert record["state"] == "running"
    # What Slurm sends ahead of a preemption or time limit (submitit asks for SIGUSR2); submitit requeues.
    subprocess.run(["scancel", "--signal=USR2", record["job_id"]], check=True)
    assert galore.run_name in study_status(folder)  # in this process: the CLI's --status is read at the end
    # Slurm holds a requeued job for about two minutes (its BeginTime); let it start at once instead.
    wait_for(lambda: job_state(record["job_id"]) == "PENDING", 120, "the signalled task to be requeued", poll=0.5)
    subprocess.run(["scontrol", "update", f"jobid={record['job_id']}", "StartTime=now"], check=True)

    mine = {i for ids in submitted.values() for i in ids}
    wait_for(lambda: not (squeue_ids() & mine), 600, "every job of the study to leave the queue", poll=2)
    record = json.loads((folder / "jobs" / "status" / f"train__{galore.run_name}.json").read_text())
    states = [h["state"] for h in record["history"]]
    assert states == ["running", "requeued", "running", "done"], record
    stopped = record["history"][1]["step"]
    assert 5 <= stopped < LONG_STEPS
    # Resumed at the step it stopped at (resume_every=0: without the stop's save it would restart at 0), and
    # no step was trained twice.
    logged = train_steps_logged(run_dir)
    assert logged == list(range(1, LONG_STEPS + 1))
    # The tune array ran first; every run trained with its (scale, method)'s chosen lr.
    tuned = tuned_lrs(spec, folder)
    assert tuned is not None and set(tuned) == {("nano", "galore")}
    galore = next(r for r in plan_runs(spec, tuned) if r.method == "galore")
    assert load_run_config(run_dir).optim.lr == galore.cfg.optim.lr == tuned[("nano", "galore")]
    train_started = min(h["time"] for h in record["history"])
    tune_records = [json.loads(p.read_text()) for p in (folder / "jobs" / "status").glob("tune*.json")]
    assert len(tune_records) == 2 + 1 and all(r["state"] == "done" for r in tune_records), tune_records
    assert all(r["time"] <= train_started for r in tune_records)  # every tune task ended before training
    assert len(submitted["tune"]) == 2  # the grid's array and the round's
    with one_torch_thread():  # as the Slurm task (1 CPU): the same kernels, so bitwise comparable
        train(galore.cfg, tmp_path / "reference", run_name=galore.run_name)  # uninterrupted, in this process
    assert final_weights(run_dir) == final_weights(tmp_path / "reference" / galore.run_name)
    assert (folder / "report" / "index.html").is_file()
    status = lens("study", str(folder), "--status").stdout
    assert "runs: 1 done" in status and "report     done" in status and "analyze    done" in status, status
    assert re.search(r"tune       done \([2-3] proxy runs\); lr nano galore", status), status


@pytest.mark.slow
def test_local_executor_runs_the_stages_and_a_two_process_run(tmp_path):
    path = spec_file(tmp_path, 8, methods=("galore",), tune=True, tune_grid=[0.5, 2], tune_fraction=0.5)
    folder = tmp_path / "study"
    lens("study", str(path), "--out", str(folder), "--executor", "local", "--processes-per-run", "2",
         "--analysis-tasks", "1")
    run_dir = folder / "runs" / "nano-galore-seed0"
    assert json.loads((run_dir / "config.json").read_text())["provenance"]["world_size"] == 2
    # the tune stage ran first as its own jobs (one process each), and the run trained with its choice
    spec = StudySpec(**json.loads(path.read_text()))
    assert load_run_config(run_dir).optim.lr == tuned_lrs(spec, folder)[("nano", "galore")]
    assert sorted(p.name for p in (folder / "tune" / "runs").iterdir()) == ["nano-galore-lr0.005",
                                                                             "nano-galore-lr0.02"]
    assert (folder / "analysis" / "spectra.csv").is_file() and (folder / "report" / "index.html").is_file()
    status = study_status(folder)
    assert "nano-galore-seed0                  done" in status and "report     done" in status, status


def test_status_reads_the_folder_alone_and_names_a_failed_task_and_its_log(tmp_path):
    path = spec_file(tmp_path, 8)
    folder = tmp_path / "study"
    folder.mkdir()
    spec = StudySpec(**json.loads(path.read_text()))
    (folder / "study.json").write_text(json.dumps({"spec": spec.to_dict(), "runs": []}))
    status = study_status(folder)
    assert "nano-full-rank-seed0" in status and "to do" in status and "runs: 2 to do" in status
    mark(folder, "train/nano-galore-seed0", "failed", error="LensError: training diverged at step 3")
    mark(folder, "analyze/1of2", "running")
    status = study_status(folder)
    line = next(ln for ln in status.splitlines() if ln.startswith("nano-galore-seed0"))
    assert "failed" in line and "diverged at step 3" in line and str(folder / "jobs" / "logs") in line
    assert "analyze    running (0 of 1 tasks done)" in status
    with pytest.raises(LensError, match="not a study folder"):
        study_status(tmp_path / "nowhere")


@pytest.mark.parametrize("kw, match", [
    (dict(executor="pbs"), "executor 'pbs'"),
    (dict(time_min=0), "--time-min 0"),
    (dict(sbatch=["qos=high"]), "--name=value"),
])
def test_bad_submit_options_are_one_clear_error(kw, match):
    with pytest.raises(LensError, match=match):
        SubmitOptions(**kw)
