"""`lowrank-lens study FILE --executor slurm|local`: the study's stages as submitit jobs.

    tune       a job array, one task per unfinished proxy run (studies with tune = true; study/tune.py)
    train      a job array, one task per unfinished run (Slurm tasks x processes-per-run ranks; submitit's
               distributed helpers set RANK/WORLD_SIZE/MASTER_ADDR for the run's processes)
    analyze    a job array over shares of the units of work (analysis/plan.py: subjects, or pieces of
               them when they are fewer than the tasks); each fills the result cache
    downstream a job array over shares of the runs (each fills the downstream cache)
    report     one job: tables from the caches, prediction, findings, the report

The stages and their order come from study/stage_table.py, the same table the inline runner walks. On
Slurm everything is submitted at once with `afterok` dependencies (train after tune, analyze and downstream
after train, report after both) and the command returns; `--status` follows it from the study folder. The local
executor runs the same jobs as processes of this machine, stage after stage, and waits.

Preemption and time limits: a training task catches Slurm's warning signal (SIGUSR2, sent 90 s ahead),
saves the rolling resume checkpoint at the next step boundary (train/stop.py), and submitit requeues it;
the requeued task resumes from that step, so nothing trained is trained again, and the resumed run is
bitwise the uninterrupted one (exact resume). Every task records its state in <study>/jobs/status/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..errors import LensError
from .runner import CPU_SCALES
from .spec import PlannedRun, StudySpec, load_spec
from .stages import analysis_request, downstream_request

log = logging.getLogger("lowrank_lens")

EXECUTORS = ("inline", "local", "slurm")
"""inline: this process (the default runner); local: submitit's LocalExecutor; slurm: submitit on Slurm."""
JOBS_DIR = "jobs"


@dataclass
class SubmitOptions:
    executor: str = "slurm"
    partition: str = ""
    account: str = ""
    time_min: int = 24 * 60
    """Time limit of every task, minutes (a training task that reaches it is requeued and resumes)."""
    gpus_per_run: int | None = None
    """GPUs (and processes) per training run; default: the study's gpus_per_run at GPU scales, 1 process on
    CPU scales."""
    processes_per_run: int | None = None
    """Processes per run without GPUs (a CPU/gloo run spread over processes, e.g. to try DDP on a laptop)."""
    cpus_per_task: int = 1
    mem_gb: int = 0
    analysis_tasks: int = 8
    """Tasks of the analysis array, and of the downstream array (there at most one per run)."""
    sbatch: list[str] = field(default_factory=list)
    """Extra sbatch options, e.g. ["--qos=high", "--constraint=a100"]."""

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise LensError(f"executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        for name in ("time_min", "cpus_per_task", "analysis_tasks"):
            if getattr(self, name) < 1:
                raise LensError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        for line in self.sbatch:
            if not line.startswith("--") or "=" not in line:
                raise LensError(f"--sbatch {line!r}: give sbatch options as --name=value (e.g. --qos=high)")

    def sbatch_parameters(self) -> dict[str, str]:
        return dict(line[2:].split("=", 1) for line in self.sbatch)


# ---- what each task records ------------------------------------------------------------------------------
def status_path(study_dir: Path, unit: str) -> Path:
    return study_dir / JOBS_DIR / "status" / f"{unit.replace('/', '__')}.json"


def mark(study_dir: Path, unit: str, state: str, **extra: Any) -> None:
    """Record a task's state (running, done, failed, requeued) with its Slurm job id and log file."""
    job = os.environ.get("SLURM_JOB_ID", "")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    path = status_path(study_dir, unit)
    history = json.loads(path.read_text()).get("history", []) if path.is_file() else []
    record = {"unit": unit, "state": state, "job_id": job or os.environ.get("SUBMITIT_LOCAL_JOB_ID", ""),
              "host": os.uname().nodename, "time": time.time(), "log": _log_file(study_dir, job), **extra}
    record["history"] = [*history, {k: record[k] for k in ("state", "job_id", "time", *extra)}]
    write_json_atomic(path, record)


def _log_file(study_dir: Path, job: str) -> str:
    logs = sorted((study_dir / JOBS_DIR / "logs" / job).glob("*_log.err")) if job else []
    return str(logs[0]) if logs else str(study_dir / JOBS_DIR / "logs")


def read_status(study_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted((study_dir / JOBS_DIR / "status").glob("*.json")):
        rec = json.loads(p.read_text())
        out[rec["unit"]] = rec
    return out


# ---- the tasks (top-level classes, so they pickle) -------------------------------------------------------
def _setup_task(study_dir: Path) -> StudySpec:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        torch.set_num_threads(int(cpus))
    return load_spec(study_dir)


class TrainTask:
    """Train (or resume) one run of the study, or one proxy run of its tune stage (`stage` "tune"); on
    Slurm's warning signal, stop at a step and requeue."""

    def __init__(self, study_dir: str, run_name: str, stage: str = "train") -> None:
        self.study_dir, self.run_name, self.stage = study_dir, run_name, stage

    def __call__(self) -> str:
        from ..train import stop

        study_dir = Path(self.study_dir)
        spec = _setup_task(study_dir)
        fit = _trainer(spec, study_dir, self.stage, self.run_name)
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one rank per task; the training code reads torchrun's variables
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        unit = f"{self.stage}/{self.run_name}"
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint() + requeue + exit
        signal.signal(signal.SIGUSR2, lambda signum, frame: stop.request())
        stop.arm()
        if env.global_rank == 0:
            mark(study_dir, unit, "running")
        try:
            fit()
        except stop.StopRequested as e:
            if env.global_rank == 0:
                mark(study_dir, unit, "requeued", step=e.step)
            if callable(requeue):
                requeue(signal.SIGUSR2, None)
            raise
        except BaseException as e:
            if env.global_rank == 0:
                mark(study_dir, unit, "failed", error=f"{type(e).__name__}: {e}")
            raise
        if env.global_rank == 0:
            mark(study_dir, unit, "done")
        return self.run_name

    def checkpoint(self) -> Any:
        """submitit's hook on preemption: run the same task again (its state is the run folder)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainTask(self.study_dir, self.run_name, self.stage))


class ShareTask:
    """One share (k of n) of the analysis or downstream work: fills the caches, writes no table."""

    def __init__(self, study_dir: str, stage: str, k: int, n: int) -> None:
        self.study_dir, self.stage, self.k, self.n = study_dir, stage, k, n

    def __call__(self) -> int:
        study_dir = Path(self.study_dir)
        spec = _setup_task(study_dir)
        unit = f"{self.stage}/{self.k + 1}of{self.n}"
        mark(study_dir, unit, "running")
        try:
            if self.stage == "analyze":
                from ..analysis.runner import compute_share

                done = compute_share(analysis_request(spec, study_dir), (self.k, self.n))
            else:
                from ..downstream.evaluate import evaluate_runs

                req = downstream_request(spec, study_dir)
                done = len(evaluate_runs(dataclasses.replace(req, runs=req.runs[self.k::self.n])))
        except BaseException as e:
            mark(study_dir, unit, "failed", error=f"{type(e).__name__}: {e}")
            raise
        mark(study_dir, unit, "done", results=done)
        return done


class ReportTask:
    """Tables from the caches, prediction, findings and the report (the study's remaining stages)."""

    def __init__(self, study_dir: str) -> None:
        self.study_dir = study_dir

    def __call__(self) -> str:
        from .runner import run_study

        study_dir = Path(self.study_dir)
        spec = _setup_task(study_dir)
        mark(study_dir, "report", "running")
        try:
            # the submitting process holds the study's lock while it waits (local); under Slurm it has returned,
            # and this job is the only one running these stages
            result = run_study(spec, study_dir, ("analyze", "downstream", "predict", "findings", "report"),
                               lock=False)
        except BaseException as e:
            mark(study_dir, "report", "failed", error=f"{type(e).__name__}: {e}")
            raise
        mark(study_dir, "report", "done")
        return str(result)


def _trainer(spec: StudySpec, study_dir: Path, stage: str, run_name: str) -> Callable[[], Any]:
    """What a TrainTask calls: train one run of the study (with the tuned lr), or one tune proxy."""
    if stage == "tune":
        from .tune import plan_proxies, proxy_runs_dir, train_proxy

        for p in plan_proxies(spec):
            if p.run.run_name == run_name:
                return lambda: train_proxy(p, proxy_runs_dir(study_dir))
    elif stage == "tune-round":  # one round past an edge of the grid for one (scale, method)
        from .tune import extend_once

        scale, _, method = run_name.partition("/")
        if scale in spec.scales and method in spec.methods:
            return lambda: extend_once(spec, study_dir, scale, method)
    else:
        from ..train import train
        from .runner import study_plan

        for r in study_plan(spec, study_dir):
            if r.run_name == run_name:
                return lambda: train(r.cfg, study_dir / "runs", run_name=r.run_name, resume=True)
    raise LensError(f"{stage} run {run_name} is not in study {spec.name}; was the study file changed after "
                    f"submitting?")


# ---- submission ------------------------------------------------------------------------------------------
def _executor(opts: SubmitOptions, study_dir: Path, name: str, tasks: int = 1, gpus: int = 0,
              after: list[str] = ()):  # type: ignore[assignment]
    import submitit

    folder = study_dir / JOBS_DIR / "logs"
    cluster = "local" if opts.executor == "local" else "slurm"
    ex = submitit.AutoExecutor(folder=str(folder) + "/%j", cluster=cluster)
    extra = opts.sbatch_parameters()
    if after:
        extra["dependency"] = "afterok:" + ":".join(after)
    params: dict[str, Any] = {"name": name, "timeout_min": opts.time_min, "nodes": 1, "tasks_per_node": tasks,
                              "cpus_per_task": opts.cpus_per_task}
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if cluster == "slurm":
        params["slurm_additional_parameters"] = extra
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.account:
            params["slurm_account"] = opts.account
    ex.update_parameters(**params)
    return ex


def processes(run: PlannedRun, spec: StudySpec, opts: SubmitOptions) -> tuple[int, int]:
    """(processes, GPUs) of one training run."""
    if run.scale in CPU_SCALES or run.shape.train.device == "cpu":
        return opts.processes_per_run or 1, 0
    gpus = opts.gpus_per_run or spec.gpus_per_run
    return gpus, gpus


def _submit_batch(ex: Any, tasks: list[Any]) -> list[Any]:
    with ex.batch():
        jobs = [ex.submit(t) for t in tasks]
    return jobs


def _array_id(jobs: list[Any]) -> list[str]:
    return sorted({str(j.job_id).split("_")[0] for j in jobs})


def submit_study(spec: StudySpec, study_dir: Path, opts: SubmitOptions) -> dict[str, list[str]]:
    """Submit (slurm) or run (local) the study's jobs; returns {stage: [job ids]}, also in jobs/submitted.json."""
    from .runner import study_lock

    study_dir = Path(study_dir).resolve()
    with study_lock(study_dir):  # while submitting (slurm) or running the stages (local)
        return _submit_study(spec, study_dir, opts)


def _submit_study(spec: StudySpec, study_dir: Path, opts: SubmitOptions) -> dict[str, list[str]]:
    from .runner import write_study_record

    write_study_record(spec, study_dir)
    from .imported import import_missing, imported_runs

    import_missing(imported_runs(spec.imported), study_dir / "runs")  # here: quick, links the weights
    from .stage_table import STAGE_TABLE

    wait = opts.executor == "local"  # no dependencies there: each stage ends before the next starts
    submitted: dict[str, list[str]] = {}
    for stage in STAGE_TABLE:
        if stage.jobs is None or not stage.applies(spec):
            continue
        after = [i for s in stage.after for i in submitted.get(s, [])]
        submitted[stage.name] = []
        previous: list[str] = []
        for array in stage.jobs(spec, study_dir, opts):
            ex = _executor(opts, study_dir, f"{spec.name}-{stage.name}", array.processes, array.gpus,
                           previous if array.after_previous else after)
            jobs = _submit_batch(ex, array.tasks)
            previous = _array_id(jobs)
            submitted[stage.name] += previous
            _finish(jobs, wait)
    write_json_atomic(study_dir / JOBS_DIR / "submitted.json", {"executor": opts.executor, "time": time.time(),
                                                               "jobs": submitted})
    return submitted


def _finish(jobs: list[Any], wait: bool) -> None:
    if not wait:
        return
    for j in jobs:
        try:
            j.results()  # one result per task (a multi-process run has several)
        except Exception as e:  # submitit wraps the task's error with its traceback
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise LensError(f"job {j.job_id} failed: {first}; its log: {j.paths.stderr}") from None
