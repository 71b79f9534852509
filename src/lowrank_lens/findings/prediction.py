"""Predict downstream accuracy from validation perplexity alone vs perplexity plus solution metrics.

The paper (docs/study.md §3.1 item 6, §5 item 7) says that adding geometric and spectral metrics to perplexity
"improves prediction of downstream performance", but not with which model or score (§3.3: unknown). This
module implements §3.3's INFERRED design, with every choice explicit and configurable:

- Unit: one run, or one run at one checkpoint (`PredictionUnit`); the paper's units are (method, scale)
  at the final checkpoint, 6 x 3 = 18 points. Target: e.g. mean zero-shot accuracy over the tasks.
- Features: (a) perplexity alone, (b) perplexity plus the chosen metrics. Perplexity enters as
  log(perplexity) by default (`log_features`): log-perplexity is the mean token loss, the quantity that
  scales linearly with model quality, so a linear model in it is the natural baseline.
- Model: ridge regression on features standardized inside each training fold (mean 0, std 1 with
  ddof=0, from the training rows only: no test row ever shapes the scaling); the intercept is not
  penalized. The penalty is chosen per outer training fold by an inner leave-one-out over `alphas`
  (each inner fold standardized on its own training rows too).
- Outer evaluation: leave-one-out ("loo"), leave-one-method-out ("lomo") or leave-one-scale-out ("loso"),
  giving out-of-fold predictions. R^2 = 1 - SSE/SST with SSE = sum (y - y_oof)^2 and SST = sum (y - mean(y))^2
  about the mean of the full target (a predictive R^2; it can be negative). MAE = mean |y - y_oof|.
- Improvement of (b) over (a): delta R^2 = R^2_b - R^2_a and delta MAE = MAE_a - MAE_b (positive = (b) better),
  with a permutation p-value: the metric columns are permuted jointly across units (perplexity and target
  fixed), the whole nested CV is refitted, and p = (1 + #{perm improvement >= observed}) / (1 + n_perm);
  for delta R^2 also the other tail, p_r2_worse = (1 + #{perm improvement <= observed}) / (1 + n_perm).
- Which metrics carry the prediction: standardized coefficients of the full-data fit, and drop-column
  importance (CV R^2 of (b) minus CV R^2 of (b) without that metric).

Pure numpy; the tables and figure are written by report/prediction.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import LensError
from .common import finite

PERPLEXITY = "val_ppl"
BASELINE = "perplexity"
AUGMENTED = "perplexity+metrics"
SPLITS = {"loo": None, "lomo": "method", "loso": "scale"}
"""Outer split name -> the unit field whose values form the held-out groups (None: one unit per fold)."""
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))
_TIE = 1e-12


@dataclass(frozen=True)
class PredictionUnit:
    """One point of the regression: a run (or a run at checkpoint `step`) with its target and features.

    `features` must hold the perplexity feature (default name "val_ppl", the raw perplexity: the log is
    taken by `predict_downstream`) and every metric used.
    """

    run_id: str
    method: str
    scale: str
    seed: int
    target: float
    features: Mapping[str, float]
    step: int | None = None

    @property
    def label(self) -> str:
        return self.run_id if self.step is None else f"{self.run_id}@{self.step}"


@dataclass(frozen=True)
class RidgeFit:
    """Ridge on standardized features: y_hat = intercept + ((x - mean) / scale) @ coef."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    alpha: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.intercept + ((X - self.mean) / self.scale) @ self.coef


@dataclass
class CVScore:
    feature_set: str
    split: str
    r2: float
    mae: float
    n: int
    predictions: np.ndarray  # [n] out-of-fold prediction of each unit
    alphas: np.ndarray  # [n] penalty chosen by the inner CV of the fold that predicted each unit


@dataclass
class Improvement:
    split: str
    delta_r2: float  # R^2(b) - R^2(a)
    delta_mae: float  # MAE(a) - MAE(b)
    p_r2: float
    p_mae: float
    n_perm: int
    p_r2_worse: float = math.nan
    """The other tail: (1 + #{perm improvement <= observed}) / (1 + n_perm); small = the metrics made the
    prediction worse than permuted (information-free) metrics do: decisive evidence against claim 7."""


@dataclass
class Coefficients:
    feature_set: str
    alpha: float  # chosen by leave-one-out on all units
    intercept: float
    coef: dict[str, float]  # per standardized column


@dataclass
class Importance:
    split: str
    metric: str
    r2_drop: float  # CV R^2 of (b) minus CV R^2 of (b) without this metric; > 0: the metric helps
    mae_increase: float  # MAE without the metric minus MAE of (b)


@dataclass
class PredictionResult:
    units: list[PredictionUnit]
    target: np.ndarray
    columns: dict[str, list[str]]  # feature set -> column names (after transforms)
    scores: list[CVScore]
    improvements: list[Improvement]
    coefficients: list[Coefficients]
    importance: list[Importance]  # per split, sorted by r2_drop (largest first)
    config: dict = field(default_factory=dict)

    def score(self, feature_set: str, split: str) -> CVScore:
        for s in self.scores:
            if s.feature_set == feature_set and s.split == split:
                return s
        raise KeyError((feature_set, split))


# --------------------------------------------------------------------------- ridge maths


def _standardize_stats(X: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population stds along `axis`; a constant column gets scale 1 (it then stays 0)."""
    mean = X.mean(axis=axis, keepdims=True)
    sd = X.std(axis=axis, keepdims=True)
    sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)
    return mean, sd


def fit_ridge(X: np.ndarray, y: np.ndarray, alpha: float) -> RidgeFit:
    """argmin_{b0, b} ||y - b0 - Z b||^2 + alpha ||b||^2 with Z = standardized X: b0 = mean(y) (unpenalized)
    and b = (Z'Z + alpha I)^-1 Z'(y - mean(y)), computed through the SVD of Z."""
    mean, sd = _standardize_stats(X, axis=0)
    Z = (X - mean) / sd
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    y_bar = float(y.mean())
    coef = Vt.T @ ((s / (s**2 + alpha)) * (U.T @ (y - y_bar)))
    return RidgeFit(mean[0], sd[0], coef, y_bar, float(alpha))


def inner_loo_mse(X: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Leave-one-out MSE of ridge for each alpha, refitting (and re-standardizing) on each inner training set.

    Vectorized over folds and alphas: the m inner training sets are stacked as [m, m-1, p] and solved
    with one batched SVD. Returns [len(alphas)].
    """
    m = len(y)
    idx = np.array([np.r_[0:i, i + 1 : m] for i in range(m)])  # [m, m-1]
    Xs, ys = X[idx], y[idx]  # [m, m-1, p], [m, m-1]
    mean, sd = _standardize_stats(Xs, axis=1)
    U, s, Vt = np.linalg.svd((Xs - mean) / sd, full_matrices=False)  # [m, m-1, k], [m, k], [m, k, p]
    y_bar = ys.mean(axis=1)
    uty = np.einsum("mnk,mn->mk", U, ys - y_bar[:, None])  # [m, k]
    a = np.asarray(alphas, dtype=float)
    d = s[:, None, :] / (s[:, None, :] ** 2 + a[None, :, None])  # [m, A, k]
    beta = np.einsum("mak,mkp->map", d * uty[:, None, :], Vt)  # [m, A, p]
    z_out = ((X[:, None, :] - mean) / sd)[:, 0, :]  # [m, p] held-out row, scaled by its fold
    pred = y_bar[:, None] + np.einsum("map,mp->ma", beta, z_out)  # [m, A]
    return ((pred - y[:, None]) ** 2).mean(axis=0)


def select_alpha(X: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> float:
    """The alpha with the smallest inner leave-one-out MSE; ties go to the largest (most regularized)."""
    mse = inner_loo_mse(X, y, alphas)
    best = np.flatnonzero(mse <= mse.min() * (1 + 1e-9) + _TIE)
    return float(np.asarray(alphas)[best].max())


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SSE/SST, SST about the mean of the full target y."""
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def outer_folds(units: Sequence[PredictionUnit], split: str) -> list[np.ndarray]:
    """Test-index arrays of the outer CV: one unit per fold ("loo"), or one method / scale per fold."""
    if split not in SPLITS:
        raise LensError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    key = SPLITS[split]
    if key is None:
        return [np.array([i]) for i in range(len(units))]
    values = [getattr(u, key) for u in units]
    groups = list(dict.fromkeys(values))
    if len(groups) < 2:
        raise LensError(
            f"split {split!r} leaves one {key} out but all units share {key} {groups[0]!r}; "
            f"use split 'loo' or add units of another {key}"
        )
    folds = [np.array([i for i, v in enumerate(values) if v == g]) for g in groups]
    for g, f in zip(groups, folds, strict=True):
        if len(units) - len(f) < 3:
            raise LensError(
                f"split {split!r}: leaving out {key} {g!r} leaves {len(units) - len(f)} training units, "
                f"need at least 3 for the inner leave-one-out; add units or use split 'loo'"
            )
    return folds


def cross_validate(X: np.ndarray, y: np.ndarray, folds: Sequence[np.ndarray], alphas: Sequence[float],
                   feature_set: str = "", split: str = "") -> CVScore:
    """Nested CV: per outer fold, choose alpha by inner LOO on the training rows, fit, predict the test rows."""
    n = len(y)
    pred, chosen = np.empty(n), np.empty(n)
    mask = np.ones(n, dtype=bool)
    for test in folds:
        mask[:] = True
        mask[test] = False
        alpha = select_alpha(X[mask], y[mask], alphas)
        pred[test] = fit_ridge(X[mask], y[mask], alpha).predict(X[test])
        chosen[test] = alpha
    mae = float(np.abs(y - pred).mean())
    return CVScore(feature_set, split, r2_score(y, pred), mae, n, pred, chosen)


# --------------------------------------------------------------------------- inputs and guard rails


def _short(names: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def design_matrix(units: Sequence[PredictionUnit], features: Sequence[str],
                  log_features: Sequence[str] = (PERPLEXITY,)) -> tuple[np.ndarray, list[str]]:
    """[n, p] matrix of the named features (natural log for those in `log_features`) and its column names.

    Raises LensError naming the runs where a feature is missing, NaN/inf, or not positive under a log.
    """
    X = np.empty((len(units), len(features)))
    names = []
    for j, f in enumerate(features):
        bad = [u.label for u in units if not finite(u.features.get(f))]
        if bad:
            raise LensError(
                f"feature {f!r} is missing or NaN for {len(bad)} of {len(units)} units ({_short(bad)}); "
                f"compute it for those runs or leave {f!r} out of the features"
            )
        col = np.array([float(u.features[f]) for u in units])
        if f in log_features:
            bad = [u.label for u, v in zip(units, col, strict=True) if v <= 0]
            if bad:
                raise LensError(f"feature {f!r} must be > 0 to take its log, but is not for {_short(bad)}; "
                                f"fix those values or remove {f!r} from log_features")
            col = np.log(col)
        X[:, j] = col
        names.append(f"log({f})" if f in log_features else f)
    return X, names


def _check_inputs(units: Sequence[PredictionUnit], metrics: Sequence[str], perplexity: str,
                  alphas: Sequence[float], n_perm: int) -> np.ndarray:
    if not metrics:
        raise LensError("no metric features given; pass at least one metric name to compare with perplexity alone")
    if perplexity in metrics or len(set(metrics)) != len(metrics):
        raise LensError(f"metrics {list(metrics)} repeat a name or include the perplexity feature {perplexity!r}; "
                        f"list each metric once, without {perplexity!r}")
    labels = [u.label for u in units]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise LensError(f"duplicate units {_short(dup)}; give each run (or run and step) once")
    p, n = 1 + len(metrics), len(units)
    if n < 4 or n <= p + 2:
        k = f"{len(metrics)} metric" + ("s" if len(metrics) > 1 else "")
        raise LensError(f"only {n} units for {p} features (perplexity + {k}); need at least "
                        f"{max(4, p + 3)}: add runs or checkpoints, or use fewer metrics")
    bad = [u.label for u in units if not finite(u.target)]
    if bad:
        raise LensError(f"target is missing or NaN for {_short(bad)}; evaluate those runs downstream or drop them")
    y = np.array([float(u.target) for u in units])
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        raise LensError(f"target is constant ({y[0]:g}) across all {n} units, so R^2 is undefined; "
                        f"check that the downstream evaluation produced per-run accuracies")
    a = np.asarray(alphas, dtype=float)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a) & (a > 0)):
        raise LensError(f"alphas must be a non-empty list of positive numbers, got {list(alphas)}")
    if n_perm < 0:
        raise LensError(f"n_perm must be >= 0, got {n_perm}")
    return y


# --------------------------------------------------------------------------- the study


def predict_downstream(units: Sequence[PredictionUnit], metrics: Sequence[str], *, perplexity: str = PERPLEXITY,
                       log_features: Sequence[str] | None = None, splits: Sequence[str] = ("loo", "lomo"),
                       alphas: Sequence[float] = DEFAULT_ALPHAS, n_perm: int = 200, seed: int = 0,
                       importance: bool = True) -> PredictionResult:
    """Compare (a) perplexity alone with (b) perplexity + `metrics` as predictors of `unit.target`.

    `log_features` lists the features entered as their natural log (default: just the perplexity).
    For each split: nested-CV scores of both sets, the improvement of (b) over (a) with its permutation
    p-value (`n_perm` joint permutations of the metric columns, generator seeded by `seed`; n_perm=0
    gives p = NaN), and, with `importance`, the drop-column importance of each metric.
    """
    units = list(units)
    y = _check_inputs(units, metrics, perplexity, alphas, n_perm)
    logs = (perplexity,) if log_features is None else tuple(log_features)
    Xb, cols_b = design_matrix(units, [perplexity, *metrics], logs)
    Xa, cols = Xb[:, :1], {BASELINE: cols_b[:1], AUGMENTED: cols_b}
    if not splits:
        raise LensError(f"no splits given; pass one or more of {', '.join(SPLITS)}")
    folds = {s: outer_folds(units, s) for s in dict.fromkeys(splits)}

    scores, improvements, imp = [], [], []
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(units)) for _ in range(n_perm)]
    for split, fo in folds.items():
        sa = cross_validate(Xa, y, fo, alphas, BASELINE, split)
        sb = cross_validate(Xb, y, fo, alphas, AUGMENTED, split)
        scores += [sa, sb]
        d_r2, d_mae = sb.r2 - sa.r2, sa.mae - sb.mae
        hits_r2 = hits_mae = worse_r2 = 0
        for perm in perms:
            Xp = np.column_stack([Xb[:, 0], Xb[perm, 1:]])
            sp = cross_validate(Xp, y, fo, alphas)
            hits_r2 += sp.r2 - sa.r2 >= d_r2 - _TIE
            worse_r2 += sp.r2 - sa.r2 <= d_r2 + _TIE
            hits_mae += sa.mae - sp.mae >= d_mae - _TIE
        tail = (lambda hits: (1 + hits) / (1 + n_perm)) if n_perm else (lambda hits: math.nan)
        improvements.append(Improvement(split, d_r2, d_mae, tail(hits_r2), tail(hits_mae), n_perm, tail(worse_r2)))
        if importance:
            rows = []
            for j, m in enumerate(metrics, start=1):
                sm = cross_validate(np.delete(Xb, j, axis=1), y, fo, alphas)
                rows.append(Importance(split, m, sb.r2 - sm.r2, sm.mae - sb.mae))
            imp += sorted(rows, key=lambda r: -r.r2_drop)

    coefficients = []
    for name, X in ((BASELINE, Xa), (AUGMENTED, Xb)):
        fit = fit_ridge(X, y, select_alpha(X, y, alphas))
        coefficients.append(Coefficients(name, fit.alpha, fit.intercept,
                                         dict(zip(cols[name], map(float, fit.coef), strict=True))))
    config = {"perplexity": perplexity, "metrics": list(metrics), "log_features": list(logs),
              "splits": list(folds), "alphas": [float(a) for a in alphas], "n_perm": n_perm, "seed": seed,
              "r2": "1 - SSE/SST, SST about the mean of the full target; out-of-fold predictions"}
    return PredictionResult(units, y, cols, scores, improvements, coefficients, imp, config)
