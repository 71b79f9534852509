"""The train stage: every planned run trained with the tune stage's learning rates when the study tunes
(`study_plan`), unfinished runs only (`is_finished`), and the imported series imported beside them."""

from __future__ import annotations

import logging
from pathlib import Path

from ..runfolder.checkpoint import complete_checkpoints
from ..train import train
from .imported import import_missing, imported_runs
from .spec import PlannedRun, StudySpec, plan_runs
from .tune import tuned_lrs
from .workers import run_in_workers

log = logging.getLogger("lowrank_lens")

CPU_SCALES = ("nano", "micro")
"""Scales that train on CPU: one process per run, a plain `lowrank-lens train` line."""


def is_finished(run_dir: Path, steps: int) -> bool:
    ckpts = [s for s, p in complete_checkpoints(run_dir) if p.name != "resume"]
    return bool(ckpts) and ckpts[-1] >= steps


def study_plan(spec: StudySpec, out: Path) -> list[PlannedRun]:
    """The study's runs as they train: with the tune stage's learning rates when the study tunes."""
    return plan_runs(spec, tuned_lrs(spec, out))


def _train_one(run: PlannedRun, runs_dir: Path) -> str:
    train(run.cfg, runs_dir, run_name=run.run_name, resume=True)
    return f"{run.run_name} done"


def train_all(spec: StudySpec, out: Path) -> list[Path]:
    """Train every unfinished run: in this process, or in `spec.jobs` worker processes at once."""
    runs = study_plan(spec, out)
    todo = [r for r in runs if not is_finished(out / "runs" / r.run_name, r.shape.train.steps)]
    log.info(f"training: {len(runs) - len(todo)} of {len(runs)} runs already finished, {len(todo)} to train")
    run_in_workers(_train_one, [(r, out / "runs") for r in todo], todo, spec.jobs, "train")
    return [out / "runs" / r.run_name for r in runs] + import_missing(imported_runs(spec.imported), out / "runs")
