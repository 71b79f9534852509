"""What one analysis computes and writes, as one typed value (issue 26 §4): built once (by `lowrank-lens
analyze`, the study's analyze stage or a Python caller) and passed whole down the runner's call chain, as
RunConfig is for training.

    AnalysisRequest("runs/micro-galore-seed0", metrics="spectra", steps="final", out="tables")

Inputs are normalised (paths to Path, comma-separated names and single values to tuples, 'all' / 'final' /
'0,500,final' steps to step numbers) and checked in __post_init__: a bad field is one LensError line naming it.
Only the values are checked here; what needs the file system (do the runs exist, is the output writable) or
the registries (metric names, options) is checked where it is used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import LensError
from ..typed_fields import check_fields
from .context import EvalSettings
from .subjects import parse_steps

R = TypeVar("R")


def set_field(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen request in its __post_init__."""
    object.__setattr__(obj, name, value)


def as_path(value: Any, where: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise LensError(f"{where} expects a path, got {value!r}")
    return Path(value)


def as_paths(value: Any, where: str) -> tuple[Path, ...]:
    """One path or a sequence of them -> a tuple of Paths."""
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, Sequence):
        raise LensError(f"{where} expects a path or a list of paths, got {value!r}")
    return tuple(as_path(v, where) for v in items)


def as_names(value: Any, where: str) -> tuple[str, ...]:
    """'a,b' or ['a', 'b'] -> ('a', 'b'), blanks dropped."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(v, str) for v in items):
        raise LensError(f"{where} expects comma-separated names or a list of names, got {value!r}")
    return tuple(v.strip() for v in items if v.strip())


def from_call(cls: type[R], order: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]) -> R:
    """`cls(**kwargs)` with the positional `args` named by `order`: the keyword-compatible wrappers
    (runner.analyze, evaluate.evaluate_downstream) keep the positional order those functions had."""
    if len(args) > len(order):
        raise TypeError(f"{cls.__name__}: at most {len(order)} positional arguments ({', '.join(order)}), "
                        f"got {len(args)}")
    given = dict(zip(order, args, strict=False))
    twice = sorted(given.keys() & kwargs.keys())
    if twice:
        raise TypeError(f"{cls.__name__}: {', '.join(twice)} given both by position and by name")
    return cls(**given, **kwargs)


@dataclass(frozen=True)
class AnalysisRequest:
    """One `analyze`: which metrics on which runs' checkpoints, evaluated how, written where."""

    runs: tuple[Path, ...]
    """Run directories (runs/<run-id>); one path or a list."""
    _: KW_ONLY
    metrics: tuple[str, ...] | None = None
    """Metric names, a list or comma-separated (None or empty: every registered metric)."""
    steps: tuple[int, ...] | None = None
    """Checkpoint steps, -1 = the final one (None: every checkpoint); 'all', 'final', '0,500,final' or one int."""
    reference: Path | None = None
    """Reference run of the pairwise metrics (default: the full-rank run of the same scale and seed)."""
    overrides: tuple[str, ...] = ()
    """Metric options `<metric>.<field>=<value>`; one string is one option."""
    settings: EvalSettings = field(default_factory=EvalSettings)
    """How checkpoints are evaluated; None is the default, a dict is EvalSettings(**dict)."""
    out: Path | None = None
    """Where tables and figures go (default: <cache_dir>/analysis with a cache folder, else <runs[0]>/../analysis);
    always a Path once built."""
    force: bool = False
    """Recompute even when cached."""
    plots: bool = True
    """Write figures."""
    jobs: int = 1
    """Worker processes computing at once (each with cpu_count / jobs threads)."""
    cache_dir: Path | None = None
    """Cache results under <cache_dir>/<run-id>/ instead of in the run folders."""
    distributed: bool | None = None
    """Each torchrun rank computes its share (None: when WORLD_SIZE > 1)."""

    def __post_init__(self) -> None:
        set_field(self, "runs", as_paths(self.runs, "analysis.runs"))
        if not self.runs:
            raise LensError("no run directory given; pass one or more runs/<run-id> folders")
        if self.metrics is not None:
            set_field(self, "metrics", as_names(self.metrics, "analysis.metrics") or None)
        steps: Any = self.steps
        if isinstance(steps, str):
            steps = parse_steps(steps)
        elif isinstance(steps, int) and not isinstance(steps, bool):
            steps = [steps]
        if steps is not None and not isinstance(steps, (list, tuple)):
            raise LensError(f"analysis.steps expects 'all', 'final', '0,500,final' or a list of steps, got {steps!r}")
        set_field(self, "steps", None if steps is None else tuple(steps))
        if self.reference is not None:
            set_field(self, "reference", as_path(self.reference, "analysis.reference"))
        overrides: Any = (self.overrides,) if isinstance(self.overrides, str) else self.overrides
        if not isinstance(overrides, Sequence):
            raise LensError(f"analysis.overrides expects a list of metric.field=value, got {overrides!r}")
        set_field(self, "overrides", tuple(overrides))
        set_field(self, "settings", _settings(self.settings))
        if self.cache_dir is not None:
            set_field(self, "cache_dir", as_path(self.cache_dir, "analysis.cache_dir"))
        out = (self.cache_dir or self.runs[0].parent) / "analysis" if self.out is None else self.out
        set_field(self, "out", as_path(out, "analysis.out"))
        check_fields(self, "analysis")
        if self.jobs < 1:
            raise LensError(f"jobs {self.jobs}: analysis needs at least one process (--jobs 1 computes in this one)")

    @property
    def step_list(self) -> list[int] | None:
        """`steps` as the list the subjects take (None: every checkpoint)."""
        return None if self.steps is None else list(self.steps)


def _settings(value: Any) -> EvalSettings:
    if value is None:
        return EvalSettings()
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(EvalSettings)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise LensError(f"analysis.settings: unknown field(s) {unknown}; choose from {', '.join(sorted(names))}")
        return EvalSettings(**value)
    if not isinstance(value, EvalSettings):
        raise LensError(f"analysis.settings expects EvalSettings or a dict of its fields, got {value!r}")
    return value
