"""`lowrank-lens study`: train the grid, analyse every run, evaluate downstream, predict, compute the findings
(statistics, matched perplexity, claims) and report them.

Resumable at every level: a finished run is skipped, a killed run resumes from its newest checkpoint, and
metric / downstream results come from the content-hash cache. Layout:

    <out>/study.json         the resolved StudySpec and run list
         /runs/<run-id>/     one run directory per (scale, method, seed)
         /analysis/          metric tables (CSV, Parquet) and figures
         /downstream/        zero-shot accuracy tables
         /prediction/        downstream-from-metrics regression tables and figure
         /findings/          seed statistics, matched perplexity, claims (study/findings_stage.py)
         /report/index.html  the report (reads only the files above)

This module holds the inline runner (`run_study`, which walks study/stage_table.py in this process under the
study folder's lock), the dry-run plan (`describe_plan`, with each run's training command) and that lock.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..errors import LensError
from ..locks import BusyError, FileLock
from .spec import PlannedRun, StudySpec, plan_proxies, plan_runs, tune_protocol
from .stage_table import run_stages
from .train_stage import CPU_SCALES, is_finished
from .tune import tuned_lrs

STAGES = ("tune", "train", "analyze", "downstream", "predict", "findings", "report")
"""In the order they run (study/stage_table.py); the report stage always recomputes the findings first, so a
page never shows statistics of older tables. tune does something only in a study with `tune = true`."""


def train_command(run: PlannedRun, runs_dir: Path, gpus: int) -> str:
    """The CLI line that trains (or resumes) one planned run; torchrun for GPU scales."""
    sets = " ".join(f"--set {shlex.quote(o)}" for o in run.overrides)
    args = (f"train --preset {run.scale} --method {run.method} --out {shlex.quote(str(runs_dir))} "
            f"--run-name {run.run_name} --resume {sets}")
    if run.scale in CPU_SCALES or gpus <= 1:
        return f"lowrank-lens {args}"
    return f"torchrun --standalone --nproc_per_node {gpus} -m lowrank_lens {args}"


def describe_plan(spec: StudySpec, out: Path) -> str:
    tuned, head = None, []
    if spec.tune:
        head = [f"tune: {len(plan_proxies(spec))} proxy runs first ({tune_protocol(spec)}); each (scale, method) then "
                f"trains with the lr of the lowest final validation loss", ""]
        try:
            tuned = tuned_lrs(spec, out)
        except LensError:  # not tuned yet: the runs show the preset's lr, marked
            pass
    runs = plan_runs(spec, tuned)
    pending = spec.tune and not tuned
    lines = [f"study {spec.name}: {len(runs)} runs ({len(spec.methods)} methods x {len(spec.scales)} scales x "
             f"{len(spec.seeds)} seeds) in {out}", "", *head]
    lines.append(f"{'run':34s} {'steps':>7s} {'batch':>6s} {'lr':>8s}  status")
    for r in runs:
        status = "done" if is_finished(out / "runs" / r.run_name, r.shape.train.steps) else "to train"
        lr = f"{r.shape.optim.lr:8.2g}" + ("*" if pending else " ")
        lines.append(f"{r.run_name:34s} {r.shape.train.steps:7d} {r.shape.train.total_batch_size:6d} {lr} {status}")
    if pending:
        lines.append("* the preset's lr; the tune stage replaces it (the commands below carry it once tuned)")
    lines += ["", "commands:"] + [train_command(r, out / "runs", spec.gpus_per_run) for r in runs]
    lines += ["", f"then: lowrank-lens study <this study> --out {out}  (skips finished runs; analyses, evaluates, "
                  f"reports)"]
    return "\n".join(lines)


def study_lock(out: Path) -> FileLock:
    """The study folder's lock (<out>/.lock), held while a process runs or submits its stages: a second
    `study` on the same folder says who holds it instead of doing the same work again."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        return FileLock(out / ".lock", wait=False)
    except BusyError as e:
        raise LensError(f"another process (pid {e.holder}) is running the study in {out}; wait for it to finish "
                        f"(`study --status` shows its progress), or pass another --out") from None


def run_study(spec: StudySpec, out: str | Path, stages: tuple[str, ...] = STAGES, lock: bool = True) -> Path:
    """Run the chosen stages of a study into `out`, in the order of the stage table (study/stage_table.py);
    returns the report path (or `out` without a report stage). `lock=False` for a job that a submitting
    process started, which holds the study's lock for it (study/submit.py)."""
    out = Path(out)
    if not lock:
        return run_stages(spec, out, stages)
    with study_lock(out):
        return run_stages(spec, out, stages)
