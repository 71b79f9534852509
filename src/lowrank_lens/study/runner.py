"""`lowrank-lens study`: train the grid, analyse every run, evaluate downstream, predict, compute the findings
(statistics, matched perplexity, claims) and report them.

Resumable at every level: a finished run is skipped, a killed run resumes from its newest checkpoint, and
metric / downstream results come from the content-hash cache. Layout:

    <out>/study.json         the resolved StudySpec and run list
         /runs/<run-id>/     one run directory per (scale, method, seed)
         /analysis/          metric tables (CSV, Parquet) and figures
         /downstream/        zero-shot accuracy tables
         /prediction/        downstream-from-metrics regression tables and figure
         /findings/          seed statistics, matched perplexity, claims (study/findings.py)
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..atomic import write_json_atomic
from ..train.checkpoint import complete_checkpoints
from .spec import PlannedRun, StudySpec, plan_runs, run_names

log = logging.getLogger("lowrank_lens")

CPU_SCALES = ("nano", "micro")
STAGES = ("train", "analyze", "downstream", "predict", "findings", "report")
"""The report stage always recomputes the findings first, so a page never shows statistics of older tables."""


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
    runs = plan_runs(spec)
    lines = [f"study {spec.name}: {len(runs)} runs ({len(spec.methods)} methods x {len(spec.scales)} scales x "
             f"{len(spec.seeds)} seeds) in {out}", ""]
    lines.append(f"{'run':34s} {'steps':>7s} {'batch':>6s} {'lr':>8s}  status")
    for r in runs:
        status = "done" if is_finished(out / "runs" / r.run_name, r.cfg.train.steps) else "to train"
        lines.append(f"{r.run_name:34s} {r.cfg.train.steps:7d} {r.cfg.train.total_batch_size:6d} "
                     f"{r.cfg.optim.lr:8.2g}  {status}")
    lines += ["", "commands:"] + [train_command(r, out / "runs", spec.gpus_per_run) for r in runs]
    lines += ["", f"then: lowrank-lens study <this study> --out {out}  (skips finished runs; analyses, evaluates, "
                  f"reports)"]
    return "\n".join(lines)


def _train_one(run: PlannedRun, runs_dir: Path, threads: int) -> str:
    """One run in a worker process (top-level so it pickles)."""
    import torch

    from ..train import train

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)  # workers stay quiet; the parent reports progress
    train(run.cfg, runs_dir, run_name=run.run_name, resume=True)
    return run.run_name


def train_all(spec: StudySpec, out: Path) -> list[Path]:
    """Train every unfinished run: in this process, or in `spec.jobs` worker processes at once."""
    from ..train import train

    runs = plan_runs(spec)
    todo = [r for r in runs if not is_finished(out / "runs" / r.run_name, r.cfg.train.steps)]
    log.info(f"training: {len(runs) - len(todo)} of {len(runs)} runs already finished, {len(todo)} to train")
    t0 = time.perf_counter()
    if spec.jobs > 1 and len(todo) > 1:
        _prepare_data(todo)
        threads = max(1, (os.cpu_count() or 1) // spec.jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=spec.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_train_one, r, out / "runs", threads) for r in todo]
            for i, f in enumerate(as_completed(futures), 1):
                log.info(f"[train {i}/{len(todo)}] {f.result()} done ({time.perf_counter() - t0:.0f}s)")
    else:
        for i, r in enumerate(todo, 1):
            log.info(f"[train {i}/{len(todo)}] {r.run_name} ({time.perf_counter() - t0:.0f}s into training)")
            train(r.cfg, out / "runs", run_name=r.run_name, resume=True)
    from .imported import import_missing, imported_runs

    return [out / "runs" / r.run_name for r in runs] + import_missing(imported_runs(spec.imported), out / "runs")


def _prepare_data(runs: list[PlannedRun]) -> None:
    """Build each distinct tokenizer and token-row cache once, before workers would race to build it."""
    from ..data import build_data

    seen = set()
    for r in runs:
        key = json.dumps([dataclasses.asdict(r.cfg.data), r.cfg.model.vocab_size], sort_keys=True)
        if key not in seen:
            seen.add(key)
            build_data(r.cfg.data, r.cfg.model.vocab_size, log=log.info)


def write_study_record(spec: StudySpec, out: Path) -> None:
    """<out>/study.json: the resolved spec and its run list (what --status and submitted tasks read)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "study.json", {"spec": spec.to_dict(), "runs": run_names(spec)})


def run_study(spec: StudySpec, out: str | Path, stages: tuple[str, ...] = STAGES) -> Path:
    """Run the stages of a study into `out`; returns the report path (or `out` without a report stage)."""
    from ..analysis.context import EvalSettings
    from ..analysis.runner import analyze
    from ..analysis.subjects import parse_steps

    out = Path(out)
    write_study_record(spec, out)
    t0 = time.perf_counter()
    run_dirs = train_all(spec, out) if "train" in stages else [out / "runs" / name for name in run_names(spec)]
    timings = {"train": time.perf_counter() - t0}
    if "analyze" in stages:
        t = time.perf_counter()
        settings = EvalSettings(sequences=spec.sequences, batch_size=spec.eval_batch_size)
        analyze(run_dirs, spec.metrics or None, parse_steps(spec.analysis_steps), None, spec.metric_overrides,
                settings, out / "analysis", jobs=spec.jobs)
        timings["analyze"] = time.perf_counter() - t
    if "downstream" in stages and spec.downstream_tasks:
        from .stages import downstream_stage

        t = time.perf_counter()
        downstream_stage(spec, run_dirs, out)
        timings["downstream"] = time.perf_counter() - t
    if "predict" in stages:
        from .stages import predict_stage

        t = time.perf_counter()
        predict_stage(spec, run_dirs, out)
        timings["predict"] = time.perf_counter() - t
    result = out
    if "findings" in stages or "report" in stages:
        from .findings import write_findings

        t = time.perf_counter()
        result = write_findings(out)
        timings["findings"] = time.perf_counter() - t
    if "report" in stages:
        from ..report import write_report

        _save_timings(out, timings)  # the report shows them
        t = time.perf_counter()
        result = write_report(out)
        timings["report"] = time.perf_counter() - t
    _save_timings(out, timings)
    log.info("study stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return result


def _save_timings(out: Path, timings: dict[str, float]) -> None:
    """Seconds per stage of the latest invocation, merged over earlier ones (a partial re-run keeps the rest)."""
    path = out / "timings.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    write_json_atomic(path, {**old, **timings})
