"""Multi-seed statistics over metric tables: mean and 95% CI per group, and pairwise method differences.

The paper criticises comparisons that rest on single-seed perplexities (docs/study.md §1.5) but its own code has
no multi-seed launcher, so whether its orderings (§3.1, §5) exceed seed-to-seed variation is unknown. This
module makes that explicit for the user's runs:

- `seed_summary`: each numeric column of the metric rows (runner.analyze: one row per metric x subject) as
  mean, std (ddof=1), n and a Student-t 95% CI over seeds, per group (metric, method, scale, kind, step).
  With one seed there is no spread: the CI is NaN and the row says so.
- `pairwise_differences`: for every pair of methods in a group, a Welch t-test or a permutation test of the
  difference of means (exact over all splits when there are few), corrected for multiple comparisons
  (Holm or Bonferroni) within each group or over the whole call. A difference smaller than the larger of
  the two seed stds is flagged 'within seed spread' and not claimed, whatever its p-value.
- `Stats`, `describe`, `interval`, `order`: the small pieces the claims check (claims.py, verdicts.py)
  reuses.

Pure numpy + scipy.stats; no table library. Skipped rows and non-finite values are left out of every count.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from ..errors import LensError
from .common import finite

LEVEL = 0.95
"""Confidence level of every CI (two-sided Student t)."""
ALPHA = 0.05
"""Significance level after multiple-comparison correction."""
KEY_COLUMNS = ("metric", "run", "method", "scale", "seed", "kind", "step", "step_from", "other_run",
               "other_method", "skipped", "match", "match_gap")
"""Columns naming a row's subject, never summarized as values."""
DEFAULT_BY = ("metric", "method", "other_method", "scale", "kind", "step")
"""seed_summary groups; other_method keeps each pair of a cross metric (imib) apart (None elsewhere)."""
TESTS = ("welch", "permutation")
CORRECTIONS = ("holm", "bonferroni", "none")
FAMILIES = ("group", "all")
SPREADS = ("ci", "std", "none")
SINGLE_SEED = "single seed: no CI"
INSUFFICIENT = "insufficient seeds"


@dataclass(frozen=True)
class Stats:
    """Mean, std (ddof=1), n, Student-t CI of a sample of seed values (NaN std/CI when n < 2)."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    values: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci_low": self.ci_low, "ci_high": self.ci_high}


def describe(values: Iterable[float], level: float = LEVEL) -> Stats:
    """Stats of the finite values: mean +- t_{(1+level)/2, n-1} * std / sqrt(n)."""

    x = np.array([float(v) for v in values if finite(v)])
    n = len(x)
    if n == 0:
        return Stats(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Stats(mean, math.nan, 1, math.nan, math.nan, tuple(x))
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Stats(mean, std, n, mean - half, mean + half, tuple(x))


def interval(s: Stats, spread: str = "ci") -> tuple[float, float]:
    """The range a seed mean is uncertain over: its CI ('ci'), mean +- std ('std') or the point ('none').
    With one seed the range is the point (no spread can be estimated)."""
    if spread not in SPREADS:
        raise LensError(f"spread {spread!r} is not one of {', '.join(SPREADS)}")
    if spread == "none" or s.n < 2:
        return s.mean, s.mean
    if spread == "std":
        return s.mean - s.std, s.mean + s.std
    return s.ci_low, s.ci_high


def order(a: Stats, b: Stats, spread: str = "ci") -> str:
    """'>' or '<' when a's and b's ranges (see `interval`) do not overlap, '~' when they do (or a mean is
    missing): an ordering inside the seed spread is not claimed."""
    if not (math.isfinite(a.mean) and math.isfinite(b.mean)):
        return "~"
    (alo, ahi), (blo, bhi) = interval(a, spread), interval(b, spread)
    if alo > bhi:
        return ">"
    if ahi < blo:
        return "<"
    return "~"


def numeric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Columns holding a finite number in some row, other than the subject columns (KEY_COLUMNS)."""
    seen: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k not in KEY_COLUMNS and finite(v):
                seen.setdefault(k, None)
    return list(seen)


def _groups(rows: Iterable[dict[str, Any]], by: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("skipped"):
            continue
        out.setdefault(tuple(row.get(k) for k in by), []).append(row)
    return out


def _one_per_seed(rows: Sequence[dict[str, Any]], where: str, by: Sequence[str]) -> None:
    seeds = [r.get("seed") for r in rows]
    dup = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if dup:
        raise LensError(f"{where}: several rows for seed(s) {', '.join(dup)}; group by the column that tells "
                        f"them apart (e.g. add 'other_method' or 'run' to by={tuple(by)})")


def seed_summary(rows: Sequence[dict[str, Any]], by: Sequence[str] = DEFAULT_BY,
                 columns: Sequence[str] | None = None, level: float = LEVEL) -> list[dict[str, Any]]:
    """One row per group x column: the group keys, column, mean, std, n, ci_low, ci_high, seeds, flag.

    Groups are the distinct values of `by` (a key a row lacks reads None); `columns` defaults to every
    numeric column. Each group must hold one row per seed (else LensError: add the telling column to `by`).
    flag is SINGLE_SEED when n == 1 (CI NaN), '' otherwise.
    """
    out = []
    for key, group in _groups(rows, by).items():
        _one_per_seed(group, f"group {dict(zip(by, key, strict=True))}", by)
        for col in columns if columns is not None else numeric_columns(group):
            vals = [(r.get("seed"), r.get(col)) for r in group if finite(r.get(col))]
            if not vals:
                continue
            s = describe([v for _, v in vals], level)
            out.append({**dict(zip(by, key, strict=True)), "column": col, **s.as_dict(),
                        "seeds": [sd for sd, _ in vals], "flag": SINGLE_SEED if s.n == 1 else ""})
    return out


# --------------------------------------------------------------------------- tests of a difference


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value; NaN with fewer than 2 values a side. With no variance on either side
    the values are deterministic: 1.0 when the means are equal, 0.0 when they differ (the t statistic is
    infinite: distinct deterministic values are a difference, not 'not significant')."""

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def permutation_p(a: Sequence[float], b: Sequence[float], n_perm: int = 10000, seed: int = 0,
                  exact_limit: int = 20000) -> float:
    """Two-sided permutation p-value of the difference of means: the share of relabellings whose |diff| is
    at least the observed one. Exact (every split of the pooled values, the observed one included) when
    there are at most `exact_limit` splits; otherwise `n_perm` random splits, p = (1 + hits) / (1 + n_perm)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = np.concatenate([a, b])
    total = pooled.sum()
    observed = abs(a.mean() - b.mean())
    tol = 1e-12 * max(1.0, float(np.abs(pooled).max()))
    if math.comb(na + nb, na) <= exact_limit:
        idx = np.array(list(itertools.combinations(range(na + nb), na)))  # [splits, na]
        sa = pooled[idx].sum(axis=1)
        diffs = np.abs(sa / na - (total - sa) / nb)
        return float((diffs >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        sa = pooled[rng.permutation(na + nb)[:na]].sum()
        hits += abs(sa / na - (total - sa) / nb) >= observed - tol
    return (1 + hits) / (1 + n_perm)


def power_note(n_seeds: int, alpha: float = ALPHA) -> str:
    """What n seeds per method can show: the smallest two-sided exact permutation p of n vs n is
    2 / C(2n, n) (0.1 at 3 seeds), so below 4 seeds a permutation test can never be significant; the report
    therefore uses Welch's t-test, which can, but with so few seeds only large differences reach alpha."""
    if n_seeds < 2:
        return "With one seed per method no test of a difference is possible."
    p_min = 2 / math.comb(2 * n_seeds, n_seeds)
    can = "can" if p_min < alpha else "cannot"
    return (f"With {n_seeds} seeds per method an exact permutation test {can} reach p < {alpha:g} (its smallest "
            f"p-value is {p_min:.3g}), which is why the tests below are Welch t-tests; with few seeds they "
            f"detect only differences that are large against the seed spread.")


def adjust(p: Sequence[float], correction: str = "holm") -> list[float]:
    """Multiple-comparison adjusted p-values (NaN entries stay NaN and do not count in m).

    holm: sorted ascending, p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)) (1-based j);
    bonferroni: min(1, m p); none: p."""
    if correction not in CORRECTIONS:
        raise LensError(f"correction {correction!r} is not one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p, float)
    out = p.copy()
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if correction == "none" or m == 0:
        return out.tolist()
    if correction == "bonferroni":
        out[ok] = np.minimum(1.0, m * p[ok])
        return out.tolist()
    ranked = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for j, i in enumerate(ranked):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


def pairwise_differences(rows: Sequence[dict[str, Any]], column: str, metric: str,
                         by: Sequence[str] = ("scale", "kind", "step"), test: str = "welch",
                         correction: str = "holm", n_perm: int = 10000, seed: int = 0, alpha: float = ALPHA,
                         family: str = "group", exact_limit: int = 20000) -> list[dict[str, Any]]:
    """Every pair of methods within each group of `by`, on `column` of `metric`'s rows over seeds.

    Per pair: the group keys, method_a, method_b (sorted), mean_a, mean_b, std_a, std_b, n_a, n_b,
    diff = mean_a - mean_b, p (`test`), p_adjusted (`correction` over the pairs of one group, or of the whole
    call with family='all'), significant (p_adjusted < alpha), within_seed_spread (|diff| < the larger std;
    None with n < 2 on a side) and verdict: 'insufficient seeds' (n < 2 a side, p NaN), 'within seed
    spread' (flagged, not claimed), 'not significant', or 'different'.
    """
    if test not in TESTS:
        raise LensError(f"test {test!r} is not one of {', '.join(TESTS)}")
    if family not in FAMILIES:
        raise LensError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    adjust([], correction)  # validates the name
    chosen = [r for r in rows if r.get("metric") == metric and not r.get("skipped") and finite(r.get(column))]
    if not chosen:
        raise LensError(f"no finite {column!r} values in the rows of metric {metric!r}; check the metric and "
                        f"column names (columns seen: {', '.join(numeric_columns(rows)) or 'none'})")
    out: list[dict[str, Any]] = []
    families: list[list[int]] = []
    for key, group in _groups(chosen, by).items():
        where = dict(zip(by, key, strict=True))
        per_method: dict[str, list[dict[str, Any]]] = {}
        for r in group:
            per_method.setdefault(str(r.get("method")), []).append(r)
        members = []
        for ma, mb in itertools.combinations(sorted(per_method), 2):
            for m in (ma, mb):
                _one_per_seed(per_method[m], f"{metric}.{column} {where} method {m}", by)
            a = [float(r[column]) for r in per_method[ma]]
            b = [float(r[column]) for r in per_method[mb]]
            sa, sb = describe(a), describe(b)
            few = sa.n < 2 or sb.n < 2
            p = math.nan if few else (welch_p(a, b) if test == "welch" else
                                      permutation_p(a, b, n_perm, seed, exact_limit))
            diff = sa.mean - sb.mean
            within = None if few else bool(abs(diff) < max(sa.std, sb.std))
            members.append(len(out))
            out.append({**where, "metric": metric, "column": column, "method_a": ma, "method_b": mb,
                        "mean_a": sa.mean, "mean_b": sb.mean, "std_a": sa.std, "std_b": sb.std,
                        "n_a": sa.n, "n_b": sb.n, "diff": diff, "p": p, "within_seed_spread": within,
                        "test": test, "correction": correction})
        families.append(members)
    if family == "all":
        families = [[i for f in families for i in f]]
    judge(out, families, correction, alpha)
    return out


def judge(rows: list[dict[str, Any]], families: list[list[int]], correction: str = "holm",
          alpha: float = ALPHA) -> None:
    """Set p_adjusted (`correction` within each family of row indices), significant and the verdict of each
    difference row (keys p, n_a, n_b, within_seed_spread): 'insufficient seeds' (n < 2 a side), 'within seed
    spread' (flagged, never claimed), 'different' or 'not significant'."""
    for members in families:
        for i, pa in zip(members, adjust([rows[i]["p"] for i in members], correction), strict=True):
            row = rows[i]
            row["p_adjusted"] = pa
            row["significant"] = bool(math.isfinite(pa) and pa < alpha)
            if row["n_a"] < 2 or row["n_b"] < 2:
                row["verdict"] = INSUFFICIENT
            elif row["within_seed_spread"]:
                row["verdict"] = "within seed spread"
            else:
                row["verdict"] = "different" if row["significant"] else "not significant"
