"""`lowrank-lens analyze`: enumerate subjects per metric, reuse cached results, compute the rest, and write
tables (CSV, Parquet) and figures.

    run_analysis(AnalysisRequest(["runs/micro-galore-seed0", "runs/micro-full-rank-seed0"], metrics="spectra",
                                 steps="final"))
    analyze(["runs/micro-galore-seed0", "runs/micro-full-rank-seed0"], metrics=["spectra"], steps=[-1])  # same

The request (request.py) is built once, by the command line, the study or a Python caller, and passed whole
to every function below (the workers and ranks get it pickled). Metric options are overrides of the form
`<metric>.<field>=<value>` (e.g. `landscape_random.directions=10`).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import LensError
from ..typed_fields import build_section
from .base import Metric, Result
from .cache import ResultStore, content_key
from .context import Context
from .live import MEMORY
from .metrics import get_metric, metric_names
from .plan import Unit, piece_key, plan_units, share_of
from .request import AnalysisRequest, from_call
from .subjects import RunRef, Subject, check_steps
from .tables import write_csv, write_parquet

log = logging.getLogger("lowrank_lens")


def build_metrics(names: Sequence[str] | None, overrides: Sequence[str] = (),
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Metric]:
    """Instantiate metrics (default: all registered) with `<metric>.<field>=<value>` overrides (the CLI's
    --set) or `options` {metric: {field: value}} (Python's typed values; the overrides win)."""
    chosen = list(names) if names else metric_names()
    per_metric: dict[str, dict[str, Any]] = {n: dict((options or {}).get(n, {})) for n in chosen}
    for item in overrides:
        key, sep, value = item.partition("=")
        metric, dot, fld = key.strip().partition(".")
        if not (sep and dot):
            raise LensError(f"metric option {item!r} is not of the form metric.field=value")
        get_metric(metric)  # unknown metric names fail with the list of valid ones
        if metric in per_metric:
            per_metric[metric][fld] = value
    out = []
    for name in chosen:
        cls = get_metric(name)
        out.append(cls(build_section(cls.Config, per_metric[name], name)))
    return out


def cache_key(metric: Metric, subject: Subject, ctx: Context) -> str:
    parts: dict[str, Any] = {"metric": metric.name, "version": metric.version,
                             "config": dataclasses.asdict(metric.cfg), "subject": subject.key_parts()}
    if metric.needs_tokens:
        parts["tokens"] = ctx.token_key(subject.home)
    return content_key(parts)


@dataclass
class MetricOutcome:
    metric: Metric
    results: list[Result] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0


def run_metric(metric: Metric, runs: list[RunRef], steps: list[int] | None, reference: RunRef | None,
               ctx: Context, force: bool = False, cache_dir: str | Path | None = None) -> MetricOutcome:
    """Every subject of `metric`: cached, combined from cached pieces, or computed. `cache_dir`: see ResultStore."""
    out = MetricOutcome(metric)
    subjects = metric.subjects(runs, steps, reference)
    if not subjects:
        log.info(f"{metric.name}: no subject (it needs {metric.subject_kind} subjects; see --steps/--reference)")
    t0 = time.perf_counter()
    for i, subject in enumerate(subjects, 1):
        if in_memory(subject):
            result, how = computed_here(metric, subject, ctx)
        else:
            result, how = cached_or_computed(metric, subject, ctx, force, cache_dir)
        if how == "cached":  # counted in the metric's summary line, not one line per subject
            out.cached += 1
        else:
            out.computed += 1
            log.info(f"[{metric.name} {i}/{len(subjects)}] {_where(subject)}: {how}")
        out.results.append(result)
        row = {"metric": metric.name, **result.subject}
        if result.skipped:
            row["skipped"] = result.skipped
        else:
            row.update(metric.summarize(result))
        out.rows.append(row)
    out.seconds = time.perf_counter() - t0
    return out


def cached_or_computed(metric: Metric, subject: Subject, ctx: Context, force: bool = False,
                       cache_dir: str | Path | None = None) -> tuple[Result, str]:
    """(result, how): from the cache, combined from the pieces other processes cached (plan.py), or computed
    here; a new result is cached. `how` is 'cached' or a note for the progress line. A metric that evaluates,
    on a run without evaluation rows, is skipped (not cached), its reason naming what to pass."""
    missing = ctx.missing_rows(subject.home) if metric.needs_tokens else ""
    if missing:
        return Result(metric.name, subject.describe(), skipped=missing), f"skipped ({missing})"
    key = cache_key(metric, subject, ctx)
    store = ResultStore(subject.home.run_dir, cache_dir)
    result = None if force else store.get(metric.name, key)
    if result is None:  # another analyze computing the same result: wait for it, then read its result
        with store.lock(metric.name, key, f"{metric.name} of {_where(subject)}"):
            result = None if force else store.get(metric.name, key)
            if result is None:
                return _compute(metric, subject, ctx, store, key, force)
    # Identical checkpoints (e.g. step 0 of methods without surgery) share a cache entry; the result
    # describes the subject asked for, not the one that first computed it.
    result.subject = subject.describe()
    return result, "cached"


def _compute(metric: Metric, subject: Subject, ctx: Context, store: ResultStore, key: str,
             force: bool) -> tuple[Result, str]:
    pieces = None if force else store.complete_pieces(metric.name, key)
    if pieces:
        result = metric.combine(subject, pieces)
        result.info["seconds"] = sum(float(p.info.get("seconds", 0.0)) for p in pieces)
        how = f"combined from {len(pieces)} pieces"
    else:
        result, how = _timed(metric, subject, ctx)
    _provenance(result, metric, ctx)
    store.put(key, result)
    store.remove_pieces(metric.name, key)
    return result, how


def _timed(metric: Metric, subject: Subject, ctx: Context) -> tuple[Result, str]:
    start = time.perf_counter()
    try:
        result = metric.compute(subject, ctx)
    finally:
        ctx.end_progress()  # a loop that stopped before its total (Lanczos breakdown) keeps no bar open
    result.info.setdefault("seconds", time.perf_counter() - start)
    return result, f"skipped ({result.skipped})" if result.skipped else f"{result.info['seconds']:.1f}s"


def in_memory(subject: Subject) -> bool:
    """Whether a checkpoint of the subject is a model in memory (live.py), which has no file to cache by."""
    return any(MEMORY in c.path.parents for c in subject.checkpoints)


def computed_here(metric: Metric, subject: Subject, ctx: Context) -> tuple[Result, str]:
    """(result, how) computed now, never cached: a subject of models in memory."""
    missing = ctx.missing_rows(subject.home) if metric.needs_tokens else ""
    if missing:
        return Result(metric.name, subject.describe(), skipped=missing), f"skipped ({missing})"
    result, how = _timed(metric, subject, ctx)
    _provenance(result, metric, ctx)
    return result, how


def _provenance(result: Result, metric: Metric, ctx: Context) -> None:
    result.info.setdefault("config", dataclasses.asdict(metric.cfg))
    result.info.setdefault("eval", dataclasses.asdict(ctx.settings) | {"dtype": str(ctx.dtype),
                                                                         "device": str(ctx.device)})


def compute_unit(unit: Unit, ctx: Context, force: bool = False, cache_dir: str | Path | None = None) -> bool:
    """Compute and cache one unit of a split analysis unless cached; True when it computed something."""
    metric, subject = unit.metric, unit.subject
    if unit.parts == 1:
        return cached_or_computed(metric, subject, ctx, force, cache_dir)[1] != "cached"
    if metric.needs_tokens and ctx.missing_rows(subject.home):
        return False  # the merge's cached_or_computed records the skip and its reason
    key = cache_key(metric, subject, ctx)
    store = ResultStore(subject.home.run_dir, cache_dir)
    part_key = piece_key(key, unit.part, unit.parts)
    if force:  # the stale whole result would hide the new pieces (the other processes' pieces stay)
        store.remove(metric.name, key)
    elif store.get(metric.name, key) is not None or store.get(metric.name, part_key) is not None:
        return False
    start = time.perf_counter()
    try:
        piece = metric.compute_part(subject, ctx, unit.part, unit.parts)
    finally:
        ctx.end_progress()
    piece.info["seconds"] = time.perf_counter() - start
    store.put(part_key, piece)
    log.info(f"[{metric.name} piece {unit.part + 1}/{unit.parts}] {_where(subject)}: {piece.info['seconds']:.1f}s")
    return True


def _where(subject: Subject) -> str:
    d = subject.describe()
    other = f" vs {d['other_run']}" if "other_run" in d else ""
    span = f"steps {d['step_from']}->{d['step']}" if "step_from" in d else f"step {d['step']}"
    return f"{d['run']}{other} {span} ({d['kind']})"


ANALYZE_ORDER = ("runs", "metrics", "steps", "reference", "overrides", "settings", "out", "force", "plots", "jobs",
                 "cache_dir", "distributed")
"""The positional parameters analyze took before requests."""


def analyze(*args: Any, **kwargs: Any) -> dict[str, MetricOutcome]:
    """`run_analysis(AnalysisRequest(...))` from keywords (the fields of AnalysisRequest) or the positional order
    this function had: (runs, metrics, steps, reference, overrides, settings, out, force, plots, jobs, cache_dir,
    distributed)."""
    return run_analysis(from_call(AnalysisRequest, ANALYZE_ORDER, args, kwargs))


def run_analysis(req: AnalysisRequest) -> dict[str, MetricOutcome]:
    """Compute (or load) every selected metric on the runs; write `<out>/<metric>.csv|.parquet` and figures.

    jobs > 1 first computes the missing results in that many worker processes (each with cpu_count / jobs
    threads, the units of work split between them, plan.py), then tabulates and plots from the cache here.
    `cache_dir` keeps the cached results under <cache_dir>/<run-id>/ instead of in the run folders.
    `distributed` (default: when started by torchrun with WORLD_SIZE > 1): each rank computes its share of
    the units of work (plan.py), on its own GPU where there are GPUs, then rank 0 tabulates and plots from
    the cache; the other ranks return {}.
    """
    distributed = req.distributed
    if distributed is None:
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        return _analyze_over_ranks(req)
    runs = [RunRef.open(p) for p in req.runs]
    ref = RunRef.open(req.reference) if req.reference else None
    steps = req.step_list
    check_steps(runs, steps)
    force = req.force
    if req.jobs > 1:
        _compute_in_workers(req)
        force = False
    chosen = build_metrics(req.metrics, req.overrides)
    ctx = Context(req.settings)
    assert req.out is not None  # resolved when the request was built
    out_dir = req.out
    outcomes: dict[str, MetricOutcome] = {}
    for metric in chosen:
        log.info(f"== {metric.name} ({metric.dimension}) on {len(runs)} run(s)")
        outcome = run_metric(metric, runs, steps, ref, ctx, force, cache_dir=req.cache_dir)
        outcomes[metric.name] = outcome
        if outcome.rows:
            write_csv(outcome.rows, out_dir / f"{metric.name}.csv")
            write_parquet(outcome.rows, out_dir / f"{metric.name}.parquet")
        if req.plots and outcome.results:
            metric.plot([r for r in outcome.results if not r.skipped], out_dir / "figures")
        log.info(f"   {metric.name}: {outcome.computed} computed, {outcome.cached} cached in {outcome.seconds:.1f}s")
    log.info(f"tables and figures in {out_dir}")
    return outcomes


def compute_share(req: AnalysisRequest, share: tuple[int, int]) -> int:
    """One share (k, n) of an analysis (a worker process, a rank, a Slurm array task): compute and cache the
    k-th of every n units of work (plan.py); no tables. Returns how many results and pieces it computed."""
    runs = [RunRef.open(p) for p in req.runs]
    ref = RunRef.open(req.reference) if req.reference else None
    ctx = Context(req.settings)
    units = share_of(plan_units(build_metrics(req.metrics, req.overrides), runs, req.step_list, ref, share[1]),
                     share)
    return sum(compute_unit(u, ctx, req.force, req.cache_dir) for u in units)


def _compute_share_in_worker(req: AnalysisRequest, share: tuple[int, int], threads: int) -> int:

    torch.set_num_threads(threads)
    # Progress lines of the share ("[metric i/n] subject: ..."), tagged so interleaved workers stay readable.
    logging.basicConfig(level=logging.INFO, format=f"[analysis worker {share[0] + 1}/{share[1]}] %(message)s")
    return compute_share(req, share)


def _compute_in_workers(req: AnalysisRequest) -> None:

    build_metrics(req.metrics, req.overrides)  # bad names or options fail here, once, before any worker starts
    jobs = req.jobs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0 = time.perf_counter()
    log.info(f"analysis: computing in {jobs} worker processes ({threads} thread(s) each)")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_compute_share_in_worker, req, (k, jobs), threads) for k in range(jobs)]
        computed = sum(f.result() for f in futures)
    log.info(f"analysis: {computed} results computed by the workers in {time.perf_counter() - t0:.0f}s")


def _analyze_over_ranks(req: AnalysisRequest) -> dict[str, MetricOutcome]:
    """torchrun ... -m lowrank_lens analyze: rank k computes its share of the units of work (plan.py); the
    results and pieces meet in the content-hash cache, which rank 0 then reads (combining pieces) to write the
    tables. A result does not depend on the process or the split that computed it (each subject's directions
    and probes are seeded by the subject and their index), so the tables equal one process's."""

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    owns = not dist.is_initialized()
    if owns:  # gloo only carries the barriers; the metrics compute on each rank's own device
        dist.init_process_group("gloo")
    try:
        build_metrics(req.metrics, req.overrides)  # bad names or options fail on every rank before any work
        computed = compute_share(req, (rank, world))
        log.info(f"analysis rank {rank}/{world}: {computed} results computed")
        dist.barrier()
        outcomes = {}
        if rank == 0:
            outcomes = run_analysis(dataclasses.replace(req, force=False, distributed=False))
        dist.barrier()
        return outcomes
    finally:
        if owns:
            dist.destroy_process_group()
