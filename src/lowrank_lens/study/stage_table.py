"""The study's stages, written once: what each does in this process and what it submits as jobs.

`run_stages` below (what `run_study`, study/runner.py, `--executor inline`, and the report job run) walks this
table in order and calls each chosen stage's `run`; `submit_study` (study/submit.py, `--executor local|slurm`)
walks the same table and submits each stage's `jobs` (job arrays of study/tasks.py's tasks) with `afterok`
dependencies on the stages named in `after`. A stage without `jobs` runs inside the report job, which runs
the remaining stages in one process. Adding a stage is one entry here.

    tune        proxy runs over a grid of optim.lr per (scale, method) (study/tune.py)   -> tune/
    train       one run per (scale, method, seed), with the tuned lr when the study tunes -> runs/
    analyze     every metric over every checkpoint (shares of the units of work as jobs) -> analysis/
    downstream  zero-shot accuracy of every run's final checkpoint                       -> downstream/
    predict     downstream accuracy from perplexity vs perplexity + metrics               -> prediction/
    findings    statistics, matched perplexity, claims, setup vs the paper's              -> findings/
    report      the page (choosing it runs the findings first)                            -> report/
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..report import write_report
from .findings_stage import write_findings
from .spec import PlannedRun, StudySpec, plan_proxies, plan_runs, run_names, study_run_dirs
from .spec_files import write_study_record
from .stages import analyze_stage, downstream_stage, predict_stage
from .tasks import ReportTask, ShareTask, TrainTask
from .train_stage import CPU_SCALES, is_finished, train_all
from .tune import MISSING, groups, proxy_runs_dir, proxy_state, tune_all

log = logging.getLogger("lowrank_lens")


@dataclass(frozen=True)
class JobArray:
    """Tasks submitted as one array; each task runs `processes` ranks with `gpus` GPUs."""

    tasks: list[Any]
    processes: int = 1
    gpus: int = 0
    after_previous: bool = False
    """Start only after the stage's previous array ended well (the tune stage's rounds past an edge)."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StudySpec, Path], Path | None]
    """The whole stage in this process; a returned path becomes run_study's result."""
    jobs: Callable[[StudySpec, Path, Any], list[JobArray]] | None = None
    """The stage as job arrays (study_dir is absolute; opts: submit.SubmitOptions); [] when nothing is left."""
    after: tuple[str, ...] = ()
    """Stages whose jobs must end well first (Slurm afterok)."""
    applies: Callable[[StudySpec], bool] = field(default=lambda spec: True)
    needs: tuple[str, ...] = ()
    """Stages that run before this one whenever it runs (the report recomputes the findings first)."""
    output: str = ""
    """What a finished stage leaves in the study folder (--status)."""


# ---- tune ------------------------------------------------------------------------------------------------
def _tune(spec: StudySpec, out: Path) -> None:
    tune_all(spec, out)


def _tune_jobs(spec: StudySpec, study_dir: Path, opts: Any) -> list[JobArray]:
    """The grid's missing proxies as one array, then `tune_extend` rounds, one task per (scale, method) each,
    every round after the previous: a task trains its point past an edge, or ends at once when it needs none."""
    todo = [p for p in plan_proxies(spec) if proxy_state(p, proxy_runs_dir(study_dir)) == MISSING]
    arrays = [JobArray([TrainTask(str(study_dir), p.run.run_name, "tune") for p in todo])] if todo else []
    open_groups = [key for key, g in groups(spec, study_dir).items() if todo or g.next is not None or g.pending]
    for _ in range(spec.tune_extend if open_groups else 0):
        arrays.append(JobArray([TrainTask(str(study_dir), f"{scale}/{method}", "tune-round")
                                for scale, method in open_groups], after_previous=bool(arrays)))
    return arrays


# ---- train -----------------------------------------------------------------------------------------------
def _train(spec: StudySpec, out: Path) -> None:
    train_all(spec, out)


def processes(run: PlannedRun, spec: StudySpec, opts: Any) -> tuple[int, int]:
    """(processes, GPUs) of one training run."""
    if run.scale in CPU_SCALES or run.shape.train.device == "cpu":
        return opts.processes_per_run or 1, 0
    gpus = opts.gpus_per_run or spec.gpus_per_run
    return gpus, gpus


def _train_jobs(spec: StudySpec, study_dir: Path, opts: Any) -> list[JobArray]:
    by_size: dict[tuple[int, int], list[str]] = {}  # runs needing the same processes share one array
    for r in plan_runs(spec):  # names and sizes only: the tuned lr is read by each task when it starts
        if not is_finished(study_dir / "runs" / r.run_name, r.shape.train.steps):
            by_size.setdefault(processes(r, spec, opts), []).append(r.run_name)
    return [JobArray([TrainTask(str(study_dir), name) for name in names], procs, gpus)
            for (procs, gpus), names in by_size.items()]


# ---- analyze and downstream ------------------------------------------------------------------------------
def _analyze(spec: StudySpec, out: Path) -> None:
    analyze_stage(spec, out)


def _share_jobs(stage: str) -> Callable[[StudySpec, Path, Any], list[JobArray]]:
    def jobs(spec: StudySpec, study_dir: Path, opts: Any) -> list[JobArray]:
        n = opts.analysis_tasks if stage == "analyze" else min(opts.analysis_tasks, len(run_names(spec)))
        n = max(1, n)
        return [JobArray([ShareTask(str(study_dir), stage, k, n) for k in range(n)])]

    return jobs


def _downstream(spec: StudySpec, out: Path) -> None:
    downstream_stage(spec, out)


# ---- predict, findings, report ---------------------------------------------------------------------------
def _predict(spec: StudySpec, out: Path) -> None:
    predict_stage(spec, study_run_dirs(spec, out), out)


def _findings(spec: StudySpec, out: Path) -> Path:
    return write_findings(out)


def _report(spec: StudySpec, out: Path) -> Path:
    return write_report(out)


def _report_jobs(spec: StudySpec, study_dir: Path, opts: Any) -> list[JobArray]:
    return [JobArray([ReportTask(str(study_dir), run_stages)])]


STAGE_TABLE: tuple[Stage, ...] = (
    Stage("tune", _tune, _tune_jobs, applies=lambda spec: spec.tune, output="tune/tune.csv"),
    Stage("train", _train, _train_jobs, after=("tune",)),
    Stage("analyze", _analyze, _share_jobs("analyze"), after=("train",), output="analysis"),
    Stage("downstream", _downstream, _share_jobs("downstream"), after=("train",),
          applies=lambda spec: bool(spec.downstream_tasks), output="downstream/downstream.csv"),
    Stage("predict", _predict, output="prediction"),
    Stage("findings", _findings, output="findings/findings.json"),
    Stage("report", _report, _report_jobs, after=("analyze", "downstream"), needs=("findings",),
          output="report/index.html"),
)
"""In the order they run; runner.STAGES lists the same names."""


def stage(name: str) -> Stage:
    return next(s for s in STAGE_TABLE if s.name == name)


def run_stages(spec: StudySpec, out: Path, stages: tuple[str, ...]) -> Path:
    """The chosen stages (and those they need) in this process, in the table's order; returns the report path
    (or `out` without a report stage). The caller holds the study's lock: the inline runner (study/runner.py
    `run_study`), or the submitting process for the report job (study/tasks.py `ReportTask`)."""
    write_study_record(spec, out)
    chosen = set(stages) | {need for st in STAGE_TABLE if st.name in stages for need in st.needs}
    timings: dict[str, float] = {}
    result = out
    for entry in STAGE_TABLE:
        if entry.name not in chosen or not entry.applies(spec):
            continue
        if entry.name == "report":
            _save_timings(out, timings)  # the report shows them
        t = time.perf_counter()
        result = entry.run(spec, out) or result
        timings[entry.name] = time.perf_counter() - t
    _save_timings(out, timings)
    log.info("study stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return result


def _save_timings(out: Path, timings: dict[str, float]) -> None:
    """Seconds per stage of the latest invocation, merged over earlier ones (a partial re-run keeps the rest)."""
    path = out / "timings.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    write_json_atomic(path, {**old, **timings})
