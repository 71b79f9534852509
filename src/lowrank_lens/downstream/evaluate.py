"""Downstream zero-shot accuracy of trained runs through lm-evaluation-harness (docs/study.md §1.6, issue 5).

    rows = evaluate_runs(DownstreamRequest(["runs/micro-cola-seed0"], tasks="lens_mc", seeds=(0, 1, 2)))
    run_eval_downstream(DownstreamRequest([...], tasks="study", seeds=range(5), out="reports"))  # -> the CSV
    rows = evaluate_downstream(["runs/micro-cola-seed0"], ["lens_mc"], seeds=(0, 1, 2))  # the same, by keywords

One result per (checkpoint, task, evaluation seed) is cached with the analysis cache (`ResultStore(run_dir)`,
metric "downstream"; under <cache_dir>/<run-id>/ instead when a cache folder is given, so a read-only run
folder is only read), keyed by the checkpoint's model_sha256, the task's content (lm-eval version and task
files), the tokenizer hash, the seed and the settings that change scores (limit, num_fewshot, dtype,
max_length): a re-run loads everything and computes nothing. Batch size and device are not in the key.

One table row per (run, task unit): accuracy and acc_norm as mean ± std over seeds, with lm-eval's
closed-form standard error and a bootstrap standard error over examples (stats.py), the chance level of
multiple-choice tasks, and any other metric lm-eval reports (f1, mcc) averaged over seeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis.base import Result
from ..analysis.cache import ResultStore, content_key
from ..analysis.request import from_call
from ..analysis.subjects import RunRef
from ..analysis.tables import write_csv, write_parquet
from ..runfolder.checkpoint import checkpoint_sha256, read_meta
from ..runfolder.loading import expand_runs, load_checkpoint, parse_device, resolve_checkpoint
from .harness import extract, make_lm, run_seed
from .request import DTYPE_NAMES, DownstreamRequest
from .stats import bootstrap_stderr, chance_level, closed_form_stderr, over_seeds, unit_value
from .taskspec import TaskSpec, load_task, resolve_tasks, task_manager
from .tokenizer import load_run_tokenizer, run_fingerprint

log = logging.getLogger("lowrank_lens")

METRIC = "downstream"
VERSION = 1
"""Bump when what is computed changes, so cached results are recomputed."""
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def resolve_device(device: str) -> str:
    return str(parse_device(device))


class _Tasks:
    """lm-eval tasks of one call, loaded on first need (so a fully cached call never indexes lm-eval)."""

    def __init__(self, specs: list[TaskSpec], include_path: Any) -> None:
        self.specs, self.include_path = specs, include_path
        self.tm: Any = None
        self.loaded: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def get(self, specs: list[TaskSpec]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:

        if self.tm is None:
            self.tm = task_manager(self.specs, self.include_path)
        for s in specs:
            if s.name not in self.loaded:
                self.loaded[s.name] = load_task(self.tm, s)
        task_dict: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
        for s in specs:
            for k in task_dict:
                task_dict[k].update(self.loaded[s.name][0].get(k) or {})
        return task_dict, {s.name: self.loaded[s.name][1] for s in specs}


def _evaluate_run(run_dir: Path, specs: list[TaskSpec], tasks: _Tasks,
                  req: DownstreamRequest) -> dict[tuple[str, int], Result]:
    """{(task, seed): Result} of one run's checkpoint, computing only what the cache lacks."""
    import lm_eval

    seeds, settings, batch_size = req.seeds, req.score_settings, req.batch_size
    ref = RunRef.open(run_dir)
    ckpt = resolve_checkpoint(run_dir, req.step)
    meta = read_meta(ckpt)
    fp = run_fingerprint(run_dir)
    store = ResultStore(run_dir, req.cache_dir)
    subject = {"kind": "checkpoint", "run": ref.run_id, "method": ref.method, "scale": ref.scale,
               "seed": ref.seed, "step": int(meta["step"]), "checkpoint": checkpoint_sha256(ckpt)}
    keys = {(s.name, seed): content_key({"metric": METRIC, "version": VERSION, "checkpoint": subject["checkpoint"],
                                         "task": s.key, "seed": seed, "tokenizer": fp.get("tokenizer_hash"),
                                         "settings": settings})
            for s in specs for seed in seeds}
    out: dict[tuple[str, int], Result] = {}
    for k, key in keys.items():
        hit = None if req.force else store.get(METRIC, key)
        if hit is not None:
            out[k] = hit
    missing = [k for k in keys if k not in out]
    if not missing:
        log.info(f"downstream: {ref.run_id} step {subject['step']}: {len(out)} cached results")
        return out
    tok = load_run_tokenizer(run_dir, rebuild=req.rebuild_tokenizer)
    dev = resolve_device(req.device)
    ck = load_checkpoint(ckpt, device=dev, dtype=DTYPES[settings["dtype"]])
    lm = make_lm(ck.model, tok, batch_size, settings["max_length"] or ck.cfg.model.max_seq_len)
    for seed in seeds:
        todo = [s for s in specs if (s.name, seed) in missing]
        if not todo:
            continue
        task_dict, units = tasks.get(todo)
        t0 = time.perf_counter()
        raw = run_seed(lm, task_dict, seed, settings["limit"], settings["num_fewshot"])
        secs = time.perf_counter() - t0
        log.info(f"downstream: {ref.run_id} step {subject['step']} seed {seed}: "
                 f"{', '.join(s.name for s in todo)} in {secs:.1f}s on {dev}")
        for s in todo:
            filled, arrays = extract(raw, units[s.name])
            scalars = {(m if len(filled) == 1 else f"{u['name']}:{m}"): v
                       for u in filled for m, v in {**u["metrics"], "n": u["n"]}.items()}
            result = Result(metric=METRIC, subject={**subject, "task": s.name, "eval_seed": seed}, scalars=scalars,
                            arrays=arrays, info={"units": filled, "task_key": s.key, "settings": settings,
                                                 "lm_eval": lm_eval.__version__, "device": dev,
                                                 "batch_size": str(batch_size), "seconds": secs})
            store.put(keys[(s.name, seed)], result)
            out[(s.name, seed)] = result
    del lm, ck
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def _rows(results: dict[tuple[str, int], Result], specs: list[TaskSpec], seeds: Sequence[int],
          bootstrap_iters: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one run: one per task unit, aggregated over evaluation seeds."""
    rows = []
    for spec in specs:
        per_seed = [results[(spec.name, seed)] for seed in seeds]
        first = per_seed[0]
        for ui, unit in enumerate(first.info["units"]):
            row: dict[str, Any] = {"metric": METRIC, **{k: first.subject[k] for k in
                                                        ("run", "method", "scale", "seed", "step")},
                                   "task": unit["name"], "n": unit["n"], "n_seeds": len(seeds),
                                   "eval_seeds": ",".join(map(str, seeds)), "limit": settings["limit"],
                                   "num_fewshot": settings["num_fewshot"], "lm_eval": first.info["lm_eval"]}
            names: dict[str, None] = {}
            for r in per_seed:
                u = r.info["units"][ui]
                names.update(dict.fromkeys(u["metrics"]))
                names.update(dict.fromkeys(k.split(".", 1)[1] for k in r.arrays
                                           if int(k[4:k.index(".")]) in u["leaf_index"]))
            names.pop("n_choices", None)
            for m in names:
                vals, ses, boots = [], [], []
                for r in per_seed:
                    u = r.info["units"][ui]
                    leaves = [r.arrays.get(f"leaf{i}.{m}") for i in u["leaf_index"]]
                    have = all(x is not None and len(x) for x in leaves)
                    if m in u["metrics"]:
                        vals.append(u["metrics"][m])
                    else:
                        vals.append(unit_value(leaves, u["weighting"]) if have else np.nan)
                    ses.append(closed_form_stderr(leaves, u["weighting"]) if have else np.nan)
                    boots.append(bootstrap_stderr(leaves, u["weighting"], bootstrap_iters) if have else np.nan)
                row[m], row[f"{m}_std_seeds"] = over_seeds(vals)
                if not all(np.isnan(ses)):
                    row[f"{m}_stderr"] = over_seeds(ses)[0]
                    row[f"{m}_se_boot"] = over_seeds(boots)[0]
            choices = [first.arrays.get(f"leaf{i}.n_choices") for i in unit["leaf_index"]]
            if all(c is not None and len(c) for c in choices):
                row["chance"] = chance_level(choices, unit["weighting"])
            rows.append(row)
    return rows


def evaluate_runs(req: DownstreamRequest) -> list[dict[str, Any]]:
    """Evaluate each run's checkpoint at `req.step` on `req.tasks` for every seed; one row per (run, task unit),
    computing only what the cache lacks. Raises LensError (one line) for unknown or unreachable tasks and
    a device this machine lacks (the settings were checked when the request was built)."""
    resolve_device(req.device)  # a bad device fails before any work, even when every result is cached
    specs = resolve_tasks(req.tasks, req.include_path)
    shared = _Tasks(specs, req.include_path)
    rows: list[dict[str, Any]] = []
    for run_dir in expand_runs(req.runs):
        results = _evaluate_run(run_dir, specs, shared, req)
        rows += _rows(results, specs, req.seeds, req.bootstrap_iters, req.score_settings)
    return rows


EVALUATE_DOWNSTREAM_ORDER = ("runs", "tasks", "step", "seeds", "batch_size", "limit", "include_path", "device",
                             "bootstrap_iters")
"""The positional parameters evaluate_downstream took before requests; the other fields go by name."""


def evaluate_downstream(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """`evaluate_runs(DownstreamRequest(...))` from keywords (the fields of DownstreamRequest) or the positional
    order this function had: (runs, tasks, step, seeds, batch_size, limit, include_path, device,
    bootstrap_iters)."""
    return evaluate_runs(from_call(DownstreamRequest, EVALUATE_DOWNSTREAM_ORDER, args, kwargs))


def run_eval_downstream(req: DownstreamRequest) -> Path:
    """The `lowrank-lens eval-downstream` command: evaluate, write downstream.csv (+ .parquet with pyarrow)
    under `req.out` (a folder, or the CSV path itself), log a method x task accuracy summary, return the CSV
    path."""
    rows = evaluate_runs(req)
    assert req.out is not None  # resolved when the request was built
    out = req.out
    csv_path = out if out.suffix == ".csv" else out / "downstream.csv"
    write_csv(rows, csv_path)
    write_parquet(rows, csv_path.with_suffix(".parquet"))
    for r in rows:
        chance = f" (chance {r['chance']:.3f})" if "chance" in r else ""
        if "acc" not in r:
            acc = "no acc"
        elif r.get("n_seeds", 1) > 1:
            acc = f"acc {r['acc']:.4f} ± {r['acc_std_seeds']:.4f} (std over {r['n_seeds']} evaluation seeds)"
        else:  # one evaluation seed: the sampling error of the accuracy, not a zero spread
            acc = f"acc {r['acc']:.4f} ± {r.get('acc_stderr', float('nan')):.4f} (stderr)"
        log.info(f"downstream: {r['run']:<28} {r['task']:<16} {acc}{chance}")
    log.info(f"downstream: {len(rows)} rows -> {csv_path}")
    return csv_path
