"""The study's submitit tasks (top-level classes, so they pickle): a training run or tune proxy (`TrainTask`,
which stops at a step and requeues on Slurm's warning signal), one share of the analysis or downstream work
(`ShareTask`), and the remaining stages in one job (`ReportTask`). study/stage_table.py makes them; study/submit.py
submits them; each records its state (study/task_records.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
import torch

from ..analysis.runner import compute_share
from ..downstream.evaluate import evaluate_runs
from ..errors import LensError
from ..train import stop, train
from .spec import StudySpec, plan_proxies
from .spec_files import load_spec
from .stages import analysis_request, downstream_request
from .task_records import mark
from .train_stage import study_plan
from .tune import extend_once, proxy_runs_dir, train_proxy

REPORT_STAGES = ("analyze", "downstream", "predict", "findings", "report")
"""What the report job runs in one process: tables from the caches, prediction, findings, the report."""


def _setup_task(study_dir: Path) -> StudySpec:
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
        study_dir = Path(self.study_dir)
        spec = _setup_task(study_dir)
        fit = _trainer(spec, study_dir, self.stage, self.run_name)
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
                done = compute_share(analysis_request(spec, study_dir), (self.k, self.n))
            else:
                req = downstream_request(spec, study_dir)
                done = len(evaluate_runs(dataclasses.replace(req, runs=req.runs[self.k::self.n])))
        except BaseException as e:
            mark(study_dir, unit, "failed", error=f"{type(e).__name__}: {e}")
            raise
        mark(study_dir, unit, "done", results=done)
        return done


class ReportTask:
    """Tables from the caches, prediction, findings and the report (the study's remaining stages, REPORT_STAGES),
    run by `run_stages`: the stage table's walk (study/stage_table.py), which the table passes when it makes
    this task, as the inline runner runs it."""

    def __init__(self, study_dir: str, run_stages: Callable[[StudySpec, Path, tuple[str, ...]], Path]) -> None:
        self.study_dir, self.run_stages = study_dir, run_stages

    def __call__(self) -> str:
        study_dir = Path(self.study_dir)
        spec = _setup_task(study_dir)
        mark(study_dir, "report", "running")
        try:
            # the submitting process holds the study's lock while it waits (local); under Slurm it has returned,
            # and this job is the only one running these stages
            result = self.run_stages(spec, study_dir, REPORT_STAGES)
        except BaseException as e:
            mark(study_dir, "report", "failed", error=f"{type(e).__name__}: {e}")
            raise
        mark(study_dir, "report", "done")
        return str(result)


def _trainer(spec: StudySpec, study_dir: Path, stage: str, run_name: str) -> Callable[[], Any]:
    """What a TrainTask calls: train one run of the study (with the tuned lr), or one tune proxy."""
    if stage == "tune":
        for p in plan_proxies(spec):
            if p.run.run_name == run_name:
                return lambda: train_proxy(p, proxy_runs_dir(study_dir))
    elif stage == "tune-round":  # one round past an edge of the grid for one (scale, method)
        scale, _, method = run_name.partition("/")
        if scale in spec.scales and method in spec.methods:
            return lambda: extend_once(spec, study_dir, scale, method)
    else:
        for r in study_plan(spec, study_dir):
            if r.run_name == run_name:
                return lambda: train(r.cfg, study_dir / "runs", run_name=r.run_name, resume=True)
    raise LensError(f"{stage} run {run_name} is not in study {spec.name}; was the study file changed after "
                    f"submitting?")
