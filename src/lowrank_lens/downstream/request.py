"""What one downstream evaluation computes and writes, as one typed value (issue 26 §4): built once (by
`lowrank-lens eval-downstream`, the study's downstream stage or a Python caller) and passed whole down
evaluate.py's call chain.

    DownstreamRequest("runs/micro-cola-seed0", tasks="lens_mc", seeds=(0, 1, 2), limit=8)

Inputs are normalised (paths to Path, comma-separated names and single values to tuples, the step to 'final'
or an int) and checked in __post_init__: a bad field is one LensError line naming it. What needs the file
system, lm-eval or the device (tasks, include paths, checkpoints, CUDA) is checked where it is used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from ..analysis.request import as_names, as_path, as_paths, set_field
from ..errors import LensError

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""Model dtypes of the evaluation (evaluate.DTYPES maps them to torch's)."""


def parse_step(step: str | int) -> str | int:
    """'final' or a checkpoint step (a non-negative integer); else a LensError naming --step."""
    text = str(step).strip()
    if text == "final":
        return text
    if not text.isdigit():
        raise LensError(f"--step {step!r}: pass 'final' or a checkpoint step such as 500")
    return int(text)


def check_int(name: str, value: Any, low: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise LensError(f"downstream.{name} expects an integer{' or None' if optional else ''}, got {value!r}")
    if low is not None and value < low:
        raise LensError(f"{name} {value} is out of range: it must be at least {low}")


SCORING_FIELDS = ("tasks", "seeds", "batch_size", "limit", "include_path", "bootstrap_iters", "num_fewshot",
                  "max_length")
"""How a model is scored: the fields DownstreamRequest shares with evaluate_model (a model in memory)."""


def scoring_fields(tasks: Any, seeds: Any, batch_size: Any, limit: Any, include_path: Any, bootstrap_iters: Any,
                   num_fewshot: Any, max_length: Any) -> dict[str, Any]:
    """The SCORING_FIELDS normalised (tasks and include paths to tuples, seeds to a tuple of ints) and checked:
    a bad one is one LensError line naming it."""
    tasks = as_names(tasks, "downstream.tasks")  # none: resolve_tasks says what to give
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise LensError(f"downstream.seeds {seeds!r}: pass comma-separated non-negative integers")
        seeds = [int(p) for p in parts]
    elif isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, Sequence):
        raise LensError(f"downstream.seeds expects a list of integers, got {seeds!r}")
    seeds = tuple(seeds)
    for seed in seeds:
        check_int("seeds", seed)
    if not seeds:
        raise LensError("give at least one evaluation seed")
    for name, value, low in (("limit", limit, 1), ("num_fewshot", num_fewshot, 0), ("max_length", max_length, 1)):
        check_int(name, value, low, optional=True)
    check_int("bootstrap_iters", bootstrap_iters, 0)
    if not isinstance(batch_size, str):
        check_int("batch_size", batch_size, 1)
    return {"tasks": tasks, "seeds": seeds, "batch_size": batch_size, "limit": limit,
            "include_path": _include(include_path), "bootstrap_iters": bootstrap_iters, "num_fewshot": num_fewshot,
            "max_length": max_length}


@dataclass(frozen=True)
class DownstreamRequest:
    """One `eval-downstream`: which runs' checkpoint on which tasks and seeds, evaluated how, written where."""

    runs: tuple[Path, ...]
    """Run directories, or folders holding runs; one path or a list."""
    _: KW_ONLY
    tasks: tuple[str, ...] = ("lens_mc",)
    """lm-eval names, presets (study, commonsense), lens_mc, JSONL or YAML files (taskspec.py); a list or
    comma-separated."""
    step: str | int = "final"
    """The checkpoint evaluated: 'final' or a step."""
    seeds: tuple[int, ...] = (0,)
    """Evaluation seeds (one int, a list, or comma-separated text)."""
    batch_size: int | str = 16
    """Evaluation batch size (lm-eval also takes 'auto')."""
    limit: int | None = None
    """First N documents of each task (smoke tests only)."""
    include_path: tuple[str, ...] | None = None
    """Folders of local task YAMLs (a path, several separated by os.pathsep or commas, or a list)."""
    device: str = "auto"
    bootstrap_iters: int = 1000
    """Draws of the bootstrap standard error (0: none)."""
    num_fewshot: int | None = None
    """Few-shot examples (None: zero-shot)."""
    dtype: str = "float32"
    max_length: int | None = None
    """Context window given to lm-eval (default: the model's max_seq_len)."""
    rebuild_tokenizer: bool = False
    """Retrain a run's BPE tokenizer from its corpus if its file is gone."""
    force: bool = False
    """Recompute even when cached."""
    cache_dir: Path | None = None
    """Cache results under <cache_dir>/<run-id>/ instead of in each run folder."""
    out: Path | None = None
    """Folder of downstream.csv or the .csv path itself (default: <cache_dir>/downstream with a cache folder,
    else <runs[0]>/../downstream); always a Path once built."""

    def __post_init__(self) -> None:
        set_field(self, "runs", as_paths(self.runs, "downstream.runs"))
        if not self.runs:
            raise LensError("no run directory given; pass one or more runs/<run-id> folders")
        for name, value in scoring_fields(**{k: getattr(self, k) for k in SCORING_FIELDS}).items():
            set_field(self, name, value)
        set_field(self, "step", parse_step(self.step))
        if self.cache_dir is not None:
            set_field(self, "cache_dir", as_path(self.cache_dir, "downstream.cache_dir"))
        out = (self.cache_dir or self.runs[0].parent) / "downstream" if self.out is None else self.out
        set_field(self, "out", as_path(out, "downstream.out"))
        if self.dtype not in DTYPE_NAMES:
            raise LensError(f"dtype {self.dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
        if not isinstance(self.device, str):
            raise LensError(f"downstream.device expects auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("rebuild_tokenizer", "force"):
            if not isinstance(getattr(self, name), bool):
                raise LensError(f"downstream.{name} expects true or false, got {getattr(self, name)!r}")

    @property
    def score_settings(self) -> dict[str, Any]:
        """The settings that change scores: part of every result's cache key and of its table rows."""
        return {"limit": self.limit, "num_fewshot": self.num_fewshot, "dtype": self.dtype,
                "max_length": self.max_length}


def _include(value: Any) -> tuple[str, ...] | None:
    """None, '' or [] -> None; a path or a list of them -> a tuple of strings (taskspec.include_paths splits
    each on os.pathsep and commas, and checks them)."""
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if items is None:
        return None
    if not isinstance(items, Sequence) or not all(isinstance(v, (str, os.PathLike)) for v in items):
        raise LensError(f"downstream.include_path expects a path or a list of paths, got {value!r}")
    kept = tuple(os.fspath(v) for v in items if os.fspath(v).strip())
    return kept or None
