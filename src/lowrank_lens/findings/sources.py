"""Several sources side by side (`lowrank-lens report A B --out DIR`): each source's headline quantities
over seeds, and for every method and scale that two sources share, the difference between them with a
Welch confidence interval.

    source_findings([("last-week", study_a), ("this-week", study_b)])
        -> {"headline": [...], "differences": [...]}

A source is anything report/sources.py reads as a study (a study folder, a run folder, an imported
series). The quantities are those of the headline table (parts.headline_samples: final val_ppl and each
per-method metric's headline column at each run's final step). A difference is source_b - source_a, where
source_a is the first source (in the order given) holding that method and scale. Its p-value is Welch's,
Holm-corrected over the methods of one (scale, quantity, pair of sources); as in the study's statistics, a
difference smaller than the larger seed std is flagged 'within seed spread', never claimed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as st

from .parts import StudyTables, headline_samples
from .statistics import ALPHA, LEVEL, describe, judge, welch_p

QUANTITY = ("scale", "method", "metric", "column")


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The `level` CI of mean(b) - mean(a) with Welch-Satterthwaite degrees of freedom; NaN with fewer
    than 2 values a side; the point when neither side varies."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(st.t.ppf(0.5 + level / 2, df)) * se
    return diff - half, diff + half


def source_findings(sources: Sequence[tuple[str, StudyTables]], alpha: float = ALPHA) -> dict[str, list]:
    """Per source its headline rows (with `source`), and the differences between sources (see the module)."""
    samples: dict[tuple, dict[str, list[float]]] = {}
    head = []
    for label, study in sources:
        for key, values in headline_samples(study):
            s = describe(values)
            head.append({"source": label, **key, "mean": s.mean, "n": s.n, "ci_low": s.ci_low,
                         "ci_high": s.ci_high})
            samples.setdefault(tuple(key[k] for k in QUANTITY), {})[label] = values
    diffs: list[dict[str, Any]] = []
    for key, by_source in samples.items():
        labels = list(by_source)
        for other in labels[1:]:
            sa, sb = describe(by_source[labels[0]]), describe(by_source[other])
            a, b = sa.values, sb.values  # the finite values: a diverged seed (NaN perplexity) is left out
            low, high = welch_interval(a, b)
            few = sa.n < 2 or sb.n < 2
            diffs.append({**dict(zip(QUANTITY, key, strict=True)), "source_a": labels[0], "source_b": other,
                          "mean_a": sa.mean, "mean_b": sb.mean, "n_a": sa.n, "n_b": sb.n, "diff": sb.mean - sa.mean,
                          "ci_low": low, "ci_high": high, "p": math.nan if few else welch_p(a, b),
                          "within_seed_spread": None if few else bool(abs(sb.mean - sa.mean) < max(sa.std, sb.std))})
    families: dict[tuple, list[int]] = {}
    for i, d in enumerate(diffs):
        families.setdefault((d["scale"], d["metric"], d["column"], d["source_a"], d["source_b"]), []).append(i)
    judge(diffs, list(families.values()), "holm", alpha)
    return {"headline": head, "differences": diffs}
