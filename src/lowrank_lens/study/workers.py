"""Training calls of a stage run in this process or in worker processes at once (the train and tune stages'
`spec.jobs`), with each run's data built once beforehand so workers do not race to build it."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

from ..data import build_data
from .spec import PlannedRun

log = logging.getLogger("lowrank_lens")


def _in_worker(fn: Callable[..., str], args: tuple, threads: int) -> str:
    """One call in a worker process (top-level so it pickles)."""
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


def _prepare_data(runs: list[PlannedRun]) -> None:
    """Build each distinct tokenizer and token-row cache once, before workers would race to build it."""
    seen = set()
    for r in runs:
        key = json.dumps([dataclasses.asdict(r.shape.data), r.shape.model.vocab_size], sort_keys=True)
        if key not in seen:
            seen.add(key)
            build_data(r.shape.data, r.shape.model.vocab_size, log=log.info)
