"""The metric seam (docs/design.md "Metric plugin"): a metric is one class in `analysis/metrics/<name>.py`.

    class MyMetric(Metric):
        name = "my_metric"; dimension = "spectra"; subject_kind = "checkpoint"
        Config = MyConfig                              # a dataclass; every constant is a field
        def compute(self, subject, ctx) -> Result      # the expensive part, cached by content
        def summarize(self, result) -> dict            # scalar columns for tables (default: scalars)
        def charts(self, results) -> list[Chart]       # cheap; reads only Results (charts.py)

`compute` must be deterministic given (config, subject, evaluation tokens, seed), must never mutate a
checkpoint, and never plots. The runner (runner.py) enumerates subjects, looks results up in the cache
(cache.py) and calls `compute` only for what is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .plotting import chart_png
from .subjects import enumerate_subjects

if TYPE_CHECKING:
    from .charts import Chart
    from .context import Context
    from .subjects import RunRef, Subject

DIMENSIONS = ("landscape", "interpolation", "spectra", "activations", "curvature")
SUBJECT_KINDS = ("checkpoint", "consecutive", "cross", "reference", "run")
"""checkpoint: one checkpoint; consecutive: pairs of successive checkpoints of one run plus (first, last);
cross: two runs (same scale and seed, different method) at the same step; reference: a run's checkpoint
and the reference run's checkpoint at the same step; run: all selected checkpoints of one run."""


@dataclass
class Result:
    """What a metric computed for one subject: scalars for tables, arrays for plots, info for provenance.

    A metric that cannot apply to a subject (e.g. IMIB with CoLA, which has no dense weights) returns a
    Result with `skipped` set to the reason; tables show the reason instead of numbers.
    """

    metric: str
    subject: dict[str, Any]
    scalars: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""

    def __post_init__(self) -> None:
        self.scalars = {k: float(v) for k, v in self.scalars.items()}
        self.arrays = {k: np.asarray(v) for k, v in self.arrays.items()}


@dataclass
class NoConfig:
    """A metric without options."""


class Metric:
    """Base class of every metric plugin; subclasses set the class attributes and implement `compute`."""

    name: ClassVar[str] = ""
    dimension: ClassVar[str] = ""
    subject_kind: ClassVar[str] = "checkpoint"
    Config: ClassVar[type] = NoConfig
    definition: ClassVar[str] = ""
    """One or two sentences: what is computed (with the paper reference), shown in the README and report."""
    needs_tokens: ClassVar[bool] = True
    """False for metrics that only read weights (spectra): their cache key ignores the evaluation tokens."""
    headline: ClassVar[str] = ""
    """The one summary column that stands for this metric in predictions and overviews ('' = none, e.g. for
    metrics of run pairs, which have no per-run value)."""
    version: ClassVar[int] = 1
    """Bump when the computation changes so cached results are recomputed."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def subjects(self, runs: list[RunRef], steps: list[int] | None, reference: RunRef | None) -> list[Subject]:
        """What this metric runs on; the default enumerates `subject_kind` (override for special pairings)."""

        return enumerate_subjects(self.subject_kind, runs, steps, reference)

    def compute(self, subject: Subject, ctx: Context) -> Result:
        raise NotImplementedError

    def parts(self, subject: Subject) -> int:
        """How many pieces at most `compute` splits into (its directions, its Hessian probes); 1 (the default)
        means indivisible. A metric that returns more implements `compute_part` and `combine`, with
        compute(s) == combine(s, [compute_part(s, ctx, i, n) for i in range(n)]) for every n up to parts(s):
        a distributed analysis spreads the pieces of one subject over processes (analysis/plan.py)."""
        return 1

    def compute_part(self, subject: Subject, ctx: Context, part: int, parts: int) -> Result:
        """Piece `part` of `parts` of compute(subject) (only for metrics whose parts() exceeds 1)."""
        raise NotImplementedError(f"{self.name} is not divisible (parts() is 1)")

    def combine(self, subject: Subject, pieces: list[Result]) -> Result:
        """The whole Result from all pieces, in part order (cheap: no model, no tokens)."""
        raise NotImplementedError(f"{self.name} is not divisible (parts() is 1)")

    def summarize(self, result: Result) -> dict[str, float]:
        """Scalar columns for tables (default: every scalar of the result)."""
        return dict(result.scalars)

    def charts(self, results: list[Result]) -> list[Chart]:
        """The metric's figures as data (charts.py), from cached results only (default: none). The report
        draws them interactive, and plot() writes them as PNG."""
        return []

    def plot(self, results: list[Result], out_dir: Path) -> list[Path]:
        """Figure files from cached results: each chart of charts() as `<out_dir>/<chart.name>.png`. A
        plugin may override it to draw with its own code (the report then shows its files as images)."""
        return [chart_png(c, out_dir / f"{c.name}.png") for c in self.charts(results)]


def part_range(total: int, part: int, parts: int) -> range:
    """The `part`-th of `parts` contiguous, near-equal slices of range(total) (the first ones one longer)."""
    size, extra = divmod(total, parts)
    start = part * size + min(part, extra)
    return range(start, start + size + (part < extra))


def finite_or_nan(x: float) -> float:
    """float(x), with inf/overflow mapped to nan so tables stay numeric."""
    x = float(x)
    return x if math.isfinite(x) else float("nan")
