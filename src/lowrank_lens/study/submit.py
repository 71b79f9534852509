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
bitwise the uninterrupted one (exact resume). Every task records its state in <study>/jobs/status/. The tasks
themselves are in study/tasks.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from ..atomic import write_json_atomic
from ..errors import LensError
from .imported import import_missing, imported_runs
from .runner import study_lock
from .spec import StudySpec
from .spec_files import write_study_record
from .stage_table import STAGE_TABLE
from .task_records import JOBS_DIR

EXECUTORS = ("inline", "local", "slurm")
"""inline: this process (the default runner); local: submitit's LocalExecutor; slurm: submitit on Slurm."""


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


# ---- submission ------------------------------------------------------------------------------------------
def _executor(opts: SubmitOptions, study_dir: Path, name: str, tasks: int = 1, gpus: int = 0,
              after: list[str] = ()):  # type: ignore[assignment]
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


def _submit_batch(ex: Any, tasks: list[Any]) -> list[Any]:
    with ex.batch():
        jobs = [ex.submit(t) for t in tasks]
    return jobs


def _array_id(jobs: list[Any]) -> list[str]:
    return sorted({str(j.job_id).split("_")[0] for j in jobs})


def submit_study(spec: StudySpec, study_dir: Path, opts: SubmitOptions) -> dict[str, list[str]]:
    """Submit (slurm) or run (local) the study's jobs; returns {stage: [job ids]}, also in jobs/submitted.json."""
    study_dir = Path(study_dir).resolve()
    with study_lock(study_dir):  # while submitting (slurm) or running the stages (local)
        return _submit_study(spec, study_dir, opts)


def _submit_study(spec: StudySpec, study_dir: Path, opts: SubmitOptions) -> dict[str, list[str]]:
    write_study_record(spec, study_dir)
    import_missing(imported_runs(spec.imported), study_dir / "runs")  # here: quick, links the weights
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
