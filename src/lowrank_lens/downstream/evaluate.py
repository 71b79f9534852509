"""Downstream zero-shot accuracy of trained runs through lm-evaluation-harness (docs/study.md §1.6, issue 5).

    rows = evaluate_runs(DownstreamRequest(["runs/micro-cola-seed0"], tasks="lens_mc", seeds=(0, 1, 2)))
    run_eval_downstream(DownstreamRequest([...], tasks="study", seeds=range(5), out="reports"))  # -> the CSV
    rows = evaluate_downstream(["runs/micro-cola-seed0"], ["lens_mc"], seeds=(0, 1, 2))  # the same, by keywords
    rows = evaluate_model(model, tokenizer, "lens_mc", seeds=(0, 1), name="galore", step=1000)  # a model in memory

One result per (checkpoint, task, evaluation seed) is cached with the analysis cache (`ResultStore(run_dir)`,
metric "downstream"; under <cache_dir>/<run-id>/ instead when a cache folder is given, so a read-only run
folder is only read), keyed by the checkpoint's model_sha256, the task's content (lm-eval version and task
files), the tokenizer hash, the seed and the settings that change scores (limit, num_fewshot, dtype,
max_length): a re-run loads everything and computes nothing. Batch size and device are not in the key.

One table row per (run, task unit): accuracy and acc_norm as mean ± std over seeds, with lm-eval's
closed-form standard error and a bootstrap standard error over examples (stats.py), the chance level of
multiple-choice tasks, and any other metric lm-eval reports (f1, mcc) averaged over seeds.

A model in memory (evaluate_model) is scored by the same code (_score) into the same rows, uncached, and is
left as it was (train/eval modes and the global random states put back), so a training loop may call it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..analysis.base import Result
from ..analysis.cache import ResultStore, content_key
from ..analysis.live import evaluating
from ..analysis.request import from_call
from ..analysis.subjects import RunRef
from ..analysis.tables import write_csv, write_parquet
from ..errors import LensError
from ..rng import kept_rng
from ..runfolder.checkpoint import checkpoint_sha256, read_meta
from ..runfolder.loading import LoadedCheckpoint, expand_runs, load_checkpoint, parse_device, resolve_checkpoint
from .harness import extract, make_lm, run_seed
from .request import DTYPE_NAMES, DownstreamRequest, check_int, scoring_fields
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


@dataclass(frozen=True)
class _Scoring:
    """What every Result of one scored model records: its subject, the score settings, batch size and device,
    and the label of its log lines."""

    subject: dict[str, Any]
    settings: dict[str, Any]
    batch_size: int | str
    device: str
    label: str


def _score(model: torch.nn.Module, tok: PreTrainedTokenizerBase, max_length: int | None,
           todo: dict[int, list[TaskSpec]], tasks: _Tasks, how: _Scoring) -> Iterator[tuple[tuple[str, int], Result]]:
    """Score a loaded model through lm-eval (make_lm, then run_seed and extract per seed) on each seed's task
    specs; yields ((task, seed), Result) as each seed finishes, so a caller can store them one seed at a time."""
    import lm_eval

    lm = make_lm(model, tok, how.batch_size, max_length)
    for seed, specs in todo.items():
        if not specs:
            continue
        task_dict, units = tasks.get(specs)
        t0 = time.perf_counter()
        raw = run_seed(lm, task_dict, seed, how.settings["limit"], how.settings["num_fewshot"])
        secs = time.perf_counter() - t0
        log.info(f"downstream: {how.label} seed {seed}: {', '.join(s.name for s in specs)} in {secs:.1f}s on "
                 f"{how.device}")
        for s in specs:
            filled, arrays = extract(raw, units[s.name])
            scalars = {(m if len(filled) == 1 else f"{u['name']}:{m}"): v
                       for u in filled for m, v in {**u["metrics"], "n": u["n"]}.items()}
            yield (s.name, seed), Result(
                metric=METRIC, subject={**how.subject, "task": s.name, "eval_seed": seed}, scalars=scalars,
                arrays=arrays, info={"units": filled, "task_key": s.key, "settings": how.settings,
                                     "lm_eval": lm_eval.__version__, "device": how.device,
                                     "batch_size": str(how.batch_size), "seconds": secs})


def _evaluate_run(run_dir: Path, specs: list[TaskSpec], tasks: _Tasks,
                  req: DownstreamRequest) -> dict[tuple[str, int], Result]:
    """{(task, seed): Result} of one run's checkpoint, computing only what the cache lacks."""
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
    todo = {seed: [s for s in specs if (s.name, seed) in missing] for seed in seeds}
    scoring = _Scoring(subject, settings, batch_size, dev, f"{ref.run_id} step {subject['step']}")
    for k, result in _score(ck.model, tok, settings["max_length"] or ck.cfg.model.max_seq_len, todo, tasks, scoring):
        store.put(keys[k], result)
        out[k] = result
    del ck
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


def evaluate_model(model: PreTrainedModel | LoadedCheckpoint, tokenizer: PreTrainedTokenizerBase,
                   tasks: str | Sequence[str] = "lens_mc", *, seeds: int | str | Sequence[int] = (0,),
                   batch_size: int | str = 16, limit: int | None = None, include_path: Any = None,
                   bootstrap_iters: int = 1000, num_fewshot: int | None = None, max_length: int | None = None,
                   name: str = "model", step: int = 0) -> list[dict[str, Any]]:
    """Evaluate a Hugging Face causal LM in memory (or a loaded checkpoint) with its tokenizer on `tasks` for
    every seed: the rows `evaluate_runs` gives for a run folder, same columns and aggregation over seeds, with
    run and method = `name`, scale "memory", seed 0 and `step` (e.g. a training callback's global step).

    The other keywords are DownstreamRequest's, checked the same way. The model is scored where it lies, in its
    own dtype and device (never cast or moved), with no cache and nothing written. It is left as it was: each
    module's train/eval mode is put back, and the global random states (python, numpy, torch CPU and CUDA) are
    restored, so a training loop's random stream continues as if no evaluation had run. lm-eval scores a copy
    of the tokenizer (it may set a pad token and the context length). Raises LensError (one line) for bad
    settings, a model that is not a transformers PreTrainedModel, and unknown or unreachable tasks."""
    model = model.model if isinstance(model, LoadedCheckpoint) else model
    if not isinstance(model, PreTrainedModel):
        raise LensError(f"evaluate_model expects a Hugging Face causal LM (transformers PreTrainedModel), got "
                        f"{type(model).__name__}; pass one, or a run folder to evaluate_runs")
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise LensError(f"evaluate_model expects the model's transformers tokenizer, got {type(tokenizer).__name__};"
                        " pass AutoTokenizer.from_pretrained(...) or load_run_tokenizer(RUN)")
    if not isinstance(name, str) or not name.strip():
        raise LensError(f"evaluate_model name {name!r}: pass a non-empty string naming the model in the table")
    check_int("step", step, 0)
    f = scoring_fields(tasks, seeds, batch_size, limit, include_path, bootstrap_iters, num_fewshot, max_length)
    specs = resolve_tasks(f["tasks"], f["include_path"])
    first = next(model.parameters())
    settings = {"limit": limit, "num_fewshot": num_fewshot, "dtype": str(first.dtype).removeprefix("torch."),
                "max_length": max_length}
    subject = {"kind": "memory", "run": name, "method": name, "scale": "memory", "seed": 0, "step": step}
    how = _Scoring(subject, settings, f["batch_size"], str(first.device), f"{name} step {step}")
    todo = {seed: specs for seed in f["seeds"]}
    with evaluating([model]), kept_rng():
        results = dict(_score(model, copy.deepcopy(tokenizer), max_length, todo, _Tasks(specs, f["include_path"]),
                              how))
    return _rows(results, specs, f["seeds"], bootstrap_iters, settings)


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
