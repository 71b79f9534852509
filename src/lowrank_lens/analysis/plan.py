"""How one analysis is split between processes (torchrun ranks, `--jobs` workers, Slurm array tasks).

The work is a list of units, the same on every process: one per (metric, subject), and, for a metric with
fewer subjects than processes, its subjects cut into pieces (Metric.parts: landscape directions, Hessian
probes), so that one checkpoint's landscape still keeps every process busy. Process k of n takes the units
k, k + n, k + 2n, ... of the list (one counter across metrics, so no process gets the first unit of every
metric). A whole unit is cached as an ordinary result; a piece is cached under the subject's key with
"-<i>of<n>", and whoever tabulates next combines the complete pieces into the ordinary result
(runner.cached_or_computed). A result never depends on the split (tested: tests/analysis/metrics/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Metric
from .subjects import RunRef, Subject


@dataclass(frozen=True)
class Unit:
    metric: Metric
    subject: Subject
    part: int = 0
    parts: int = 1
    """1: the whole subject; more: piece `part` of that many (Metric.compute_part)."""


def plan_units(metrics: list[Metric], runs: list[RunRef], steps: list[int] | None, reference: RunRef | None,
               processes: int) -> list[Unit]:
    """Every unit of work of the analysis for `processes` processes, in a fixed order."""
    units: list[Unit] = []
    for metric in metrics:
        subjects = metric.subjects(runs, steps, reference)
        cut = 1 if len(subjects) >= processes else math.ceil(processes / max(1, len(subjects)))
        for subject in subjects:
            n = max(1, min(cut, metric.parts(subject)))
            units += [Unit(metric, subject, i, n) for i in range(n)]
    return units


def share_of(units: list[Unit], share: tuple[int, int]) -> list[Unit]:
    """Process k's units of n: every n-th from the k-th."""
    k, n = share
    return units[k::n]


def piece_key(key: str, part: int, parts: int) -> str:
    return f"{key}-{part + 1}of{parts}"
