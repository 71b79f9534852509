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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import LensError
from ..locks import BusyError, FileLock
from ..runfolder.checkpoint import complete_checkpoints
from .spec import PlannedRun, StudySpec, plan_runs, run_names

log = logging.getLogger("lowrank_lens")

CPU_SCALES = ("nano", "micro")
STAGES = ("tune", "train", "analyze", "downstream", "predict", "findings", "report")
"""In the order they run (study/stage_table.py); the report stage always recomputes the findings first, so a
page never shows statistics of older tables. tune does something only in a study with `tune = true`."""


def is_finished(run_dir: Path, steps: int) -> bool:
    ckpts = [s for s, p in complete_checkpoints(run_dir) if p.name != "resume"]
    return bool(ckpts) and ckpts[-1] >= steps


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
        from .tune import plan_proxies, tune_protocol, tuned_lrs

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


def study_plan(spec: StudySpec, out: Path) -> list[PlannedRun]:
    """The study's runs as they train: with the tune stage's learning rates when the study tunes."""
    from .tune import tuned_lrs

    return plan_runs(spec, tuned_lrs(spec, out))


def study_run_dirs(spec: StudySpec, out: Path) -> list[Path]:
    """Every run folder of the study, trained then imported."""
    return [out / "runs" / name for name in run_names(spec)]


def _in_worker(fn: Callable[..., str], args: tuple, threads: int) -> str:
    """One call in a worker process (top-level so it pickles)."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)  # workers stay quiet; the parent reports progress
    return fn(*args)


def run_in_workers(fn: Callable[..., str], calls: list[tuple], runs: list[PlannedRun], jobs: int, what: str) -> None:
    """fn(*args) for every args in `calls` (each trains one of `runs`): in this process, or in `jobs` spawned
    workers at once, each with cpu_count / jobs threads; fn is top-level and returns a line to log."""
    t0 = time.perf_counter()
    if jobs > 1 and len(calls) > 1:
        _prepare_data(runs)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_in_worker, fn, args, threads) for args in calls]
            for i, f in enumerate(as_completed(futures), 1):
                log.info(f"[{what} {i}/{len(calls)}] {f.result()} ({time.perf_counter() - t0:.0f}s)")
    else:
        for i, args in enumerate(calls, 1):
            log.info(f"[{what} {i}/{len(calls)}] {fn(*args)} ({time.perf_counter() - t0:.0f}s)")


def _train_one(run: PlannedRun, runs_dir: Path) -> str:
    from ..train import train

    train(run.cfg, runs_dir, run_name=run.run_name, resume=True)
    return f"{run.run_name} done"


def train_all(spec: StudySpec, out: Path) -> list[Path]:
    """Train every unfinished run: in this process, or in `spec.jobs` worker processes at once."""
    runs = study_plan(spec, out)
    todo = [r for r in runs if not is_finished(out / "runs" / r.run_name, r.shape.train.steps)]
    log.info(f"training: {len(runs) - len(todo)} of {len(runs)} runs already finished, {len(todo)} to train")
    run_in_workers(_train_one, [(r, out / "runs") for r in todo], todo, spec.jobs, "train")
    from .imported import import_missing, imported_runs

    return [out / "runs" / r.run_name for r in runs] + import_missing(imported_runs(spec.imported), out / "runs")


def _prepare_data(runs: list[PlannedRun]) -> None:
    """Build each distinct tokenizer and token-row cache once, before workers would race to build it."""
    from ..data import build_data

    seen = set()
    for r in runs:
        key = json.dumps([dataclasses.asdict(r.shape.data), r.shape.model.vocab_size], sort_keys=True)
        if key not in seen:
            seen.add(key)
            build_data(r.shape.data, r.shape.model.vocab_size, log=log.info)


def write_study_record(spec: StudySpec, out: Path) -> None:
    """<out>/study.json: the resolved spec and its run list (what --status and submitted tasks read)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "study.json", {"spec": spec.to_dict(), "runs": run_names(spec)})


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
        return _run_stages(spec, out, stages)
    with study_lock(out):
        return _run_stages(spec, out, stages)


def _run_stages(spec: StudySpec, out: Path, stages: tuple[str, ...]) -> Path:
    from .stage_table import STAGE_TABLE

    write_study_record(spec, out)
    chosen = set(stages) | {need for st in STAGE_TABLE if st.name in stages for need in st.needs}
    timings: dict[str, float] = {}
    result = out
    for stage in STAGE_TABLE:
        if stage.name not in chosen or not stage.applies(spec):
            continue
        if stage.name == "report":
            _save_timings(out, timings)  # the report shows them
        t = time.perf_counter()
        result = stage.run(spec, out) or result
        timings[stage.name] = time.perf_counter() - t
    _save_timings(out, timings)
    log.info("study stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return result


def _save_timings(out: Path, timings: dict[str, float]) -> None:
    """Seconds per stage of the latest invocation, merged over earlier ones (a partial re-run keeps the rest)."""
    path = out / "timings.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    write_json_atomic(path, {**old, **timings})
