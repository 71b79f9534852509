"""Accuracy, its standard errors and the spread over evaluation seeds (docs/study.md §1.6: acc, mean ± std over seeds).

A table unit is one task, or one group averaged over its leaf tasks the way lm-eval averages it ("size":
weighted by the number of examples; "equal": mean of the leaf means, as for BLiMP). For a unit:
  - the value is the (weighted) mean of the per-example metric;
  - `stderr` is lm-eval's closed form for a mean (sample std / sqrt(n)) per leaf, combined as the standard
    error of the weighted mean, sqrt(sum_i w_i^2 se_i^2), examples treated as independent;
  - `se_boot` is a bootstrap over examples: each leaf's examples are resampled with replacement, the unit's
    value recomputed, and the standard deviation taken over `iters` draws (numpy generator seeded 0, so the
    table is reproducible);
  - over evaluation seeds, the mean and the standard deviation (np.std, ddof=0: 0 for one seed) are reported,
    and the standard errors are averaged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_SEED = 0
BOOTSTRAP_CHUNK = 100


def leaf_weights(sizes: Sequence[int], weighting: str) -> np.ndarray:
    """Weights of the leaf means in a unit's value (sum to 1)."""
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    if weighting == "size":
        return sizes_arr / sizes_arr.sum()
    return np.full(len(sizes_arr), 1.0 / len(sizes_arr))


def closed_form_stderr(leaves: Sequence[np.ndarray], weighting: str) -> float:
    """sqrt(sum_i w_i^2 se_i^2) with se_i = std(x_i, ddof=1) / sqrt(n_i) (lm-eval's mean_stderr)."""
    w = leaf_weights([len(x) for x in leaves], weighting)
    se2 = [np.var(x, ddof=1) / len(x) if len(x) > 1 else math.nan for x in leaves]
    return float(math.sqrt(sum(wi * wi * s for wi, s in zip(w, se2, strict=True))))


def bootstrap_stderr(leaves: Sequence[np.ndarray], weighting: str, iters: int, seed: int = BOOTSTRAP_SEED) -> float:
    """Bootstrap standard error of the unit's value, resampling examples within each leaf."""
    if iters <= 1 or any(len(x) == 0 for x in leaves):
        return math.nan
    rng = np.random.default_rng(seed)
    w = leaf_weights([len(x) for x in leaves], weighting)
    draws = np.zeros(iters)
    for start in range(0, iters, BOOTSTRAP_CHUNK):
        b = min(BOOTSTRAP_CHUNK, iters - start)
        for wi, x in zip(w, leaves, strict=True):
            idx = rng.integers(0, len(x), size=(b, len(x)))
            draws[start:start + b] += wi * x[idx].mean(axis=1)
    return float(draws.std(ddof=1))


def unit_value(leaves: Sequence[np.ndarray], weighting: str) -> float:
    """The unit's value from per-example values (equals lm-eval's reported acc for that unit)."""
    w = leaf_weights([len(x) for x in leaves], weighting)
    return float(sum(wi * x.mean() for wi, x in zip(w, leaves, strict=True)))


def chance_level(n_choices: Sequence[np.ndarray], weighting: str) -> float:
    """Expected accuracy of uniform guessing: mean of 1/#choices, weighted like the unit."""
    return unit_value([1.0 / np.asarray(c, dtype=np.float64) for c in n_choices], weighting)


def over_seeds(values: Sequence[float]) -> tuple[float, float]:
    """(mean, std with ddof=0) of one quantity over evaluation seeds, ignoring NaN."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std())
