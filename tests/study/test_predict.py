"""Downstream prediction from perplexity vs perplexity + metrics (findings/prediction.py; docs/study.md §3.3, §5
item 7).

Synthetic units with a planted relation, target = 0.9 - 0.15 log(ppl) + 0.03 good + small noise, check
that the metric that drives the target gains R^2 over perplexity alone with a small permutation p-value,
and that a pure-noise metric does not. Under the null the p-value is roughly uniform, so the noise check
uses a fixed data seed; its assertions are about that one draw.
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
import pytest

from lowrank_lens.errors import LensError
from lowrank_lens.findings.prediction import (
    AUGMENTED,
    BASELINE,
    DEFAULT_ALPHAS,
    PredictionUnit,
    cross_validate,
    fit_ridge,
    inner_loo_mse,
    outer_folds,
    predict_downstream,
    select_alpha,
)
from lowrank_lens.report.prediction import write_prediction_report

N_PERM = 99


def make_units(seed: int = 0, n_methods: int = 6, scales: tuple[str, ...] = ("s", "m", "l")) -> list[PredictionUnit]:
    rng = np.random.default_rng(seed)
    units = []
    for mi in range(n_methods):
        for si, sc in enumerate(scales):
            ppl = float(np.exp(3.6 - 0.4 * si + 0.08 * rng.normal()))
            good, noise = float(rng.normal()), float(rng.normal())
            y = 0.9 - 0.15 * math.log(ppl) + 0.03 * good + 0.003 * rng.normal()
            units.append(PredictionUnit(f"run-m{mi}-{sc}", f"m{mi}", sc, 0, float(y),
                                        {"val_ppl": ppl, "good": good, "noise": noise}))
    return units


@pytest.fixture(scope="module")
def units() -> list[PredictionUnit]:
    return make_units()


@pytest.fixture(scope="module")
def good_result(units):
    return predict_downstream(units, ["good", "noise"], n_perm=N_PERM, seed=0)


# --------------------------------------------------------------------------- ridge maths


def test_ridge_matches_hand_computed_closed_form():
    # x = [-1, 1, -1, 1] is already standardized (mean 0, std 1); y_bar = 1.5, Z'Z = 4, Z'(y - y_bar) = 4
    X = np.array([[-1.0], [1.0], [-1.0], [1.0]])
    y = np.array([0.0, 2.0, 1.0, 3.0])
    for alpha in (0.5, 1.0, 4.0):
        fit = fit_ridge(X, y, alpha)
        assert fit.intercept == pytest.approx(1.5)
        assert fit.coef[0] == pytest.approx(4.0 / (4.0 + alpha))
        assert fit.predict(np.array([[1.0]]))[0] == pytest.approx(1.5 + 4.0 / (4.0 + alpha))


def test_ridge_with_chosen_alpha_matches_augmented_normal_equations():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(9, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
    y = X @ [0.5, -0.05, 3.0] + 0.3 * rng.normal(size=9)
    alpha = select_alpha(X, y, DEFAULT_ALPHAS)
    assert alpha in DEFAULT_ALPHAS
    fit = fit_ridge(X, y, alpha)
    Z = (X - X.mean(0)) / X.std(0)
    A = np.column_stack([np.ones(9), Z])
    P = np.diag([0.0, alpha, alpha, alpha])  # intercept unpenalized
    beta = np.linalg.solve(A.T @ A + P, A.T @ y)
    assert fit.intercept == pytest.approx(beta[0])
    np.testing.assert_allclose(fit.coef, beta[1:], rtol=1e-10, atol=1e-12)


def test_inner_loo_and_nested_cv_match_naive_loops():
    """The vectorized inner LOO and the nested CV equal plain loops that refit and re-standardize on the
    training rows only (no test row shapes the scaling)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(8, 2)) * [1.0, 50.0]
    y = X @ [1.0, 0.01] + 0.5 * rng.normal(size=8)
    alphas = [0.01, 1.0, 100.0]

    def naive_loo_mse(Xt, yt):
        out = []
        for a in alphas:
            errs = []
            for i in range(len(yt)):
                keep = np.arange(len(yt)) != i
                Z = (Xt[keep] - Xt[keep].mean(0)) / Xt[keep].std(0)
                b = np.linalg.solve(Z.T @ Z + a * np.eye(2), Z.T @ (yt[keep] - yt[keep].mean()))
                z = (Xt[i] - Xt[keep].mean(0)) / Xt[keep].std(0)
                errs.append((yt[keep].mean() + z @ b - yt[i]) ** 2)
            out.append(np.mean(errs))
        return np.array(out)

    np.testing.assert_allclose(inner_loo_mse(X, y, alphas), naive_loo_mse(X, y), rtol=1e-10)
    cv = cross_validate(X, y, [np.array([i]) for i in range(8)], alphas)
    for i in range(8):
        keep = np.arange(8) != i
        a = alphas[int(np.argmin(naive_loo_mse(X[keep], y[keep])))]
        assert cv.alphas[i] == a
        assert cv.predictions[i] == pytest.approx(fit_ridge(X[keep], y[keep], a).predict(X[i : i + 1])[0])
    sst = ((y - y.mean()) ** 2).sum()
    assert cv.r2 == pytest.approx(1 - ((y - cv.predictions) ** 2).sum() / sst)
    assert cv.mae == pytest.approx(np.abs(y - cv.predictions).mean())


def test_outer_folds_group_by_method_and_scale(units):
    assert len(outer_folds(units, "loo")) == 18
    lomo = outer_folds(units, "lomo")
    assert len(lomo) == 6 and all({units[i].method for i in f} == {units[f[0]].method} for f in lomo)
    loso = outer_folds(units, "loso")
    assert len(loso) == 3 and sorted(len(f) for f in loso) == [6, 6, 6]


# --------------------------------------------------------------------------- the planted relation


def test_driving_metric_gains_r2_with_small_p(units):
    r = predict_downstream(units, ["good"], n_perm=N_PERM, seed=1, importance=False)
    for split in ("loo", "lomo"):
        a, b = r.score(BASELINE, split), r.score(AUGMENTED, split)
        assert b.r2 > 0.95 and b.r2 - a.r2 > 0.15, (split, a.r2, b.r2)
        assert b.mae < 0.5 * a.mae
        imp = next(i for i in r.improvements if i.split == split)
        assert imp.delta_r2 == pytest.approx(b.r2 - a.r2)
        assert imp.p_r2 < 0.05 and imp.p_mae < 0.05
        assert imp.p_r2 == pytest.approx(1 / (1 + N_PERM))  # no permutation comes close
        assert imp.p_r2_worse == pytest.approx(1.0)  # ... and every permutation is worse (the other tail)
    assert r.columns[BASELINE] == ["log(val_ppl)"]
    assert r.columns[AUGMENTED] == ["log(val_ppl)", "good"]


def test_noise_metric_does_not_gain(units):
    r = predict_downstream(units, ["noise"], n_perm=N_PERM, seed=1, importance=False)
    for imp in r.improvements:
        assert imp.delta_r2 < 0.02, imp
        assert imp.p_r2 > 0.2, imp
        assert imp.p_r2_worse > 0.05, imp  # not decisively worse than information-free metrics either


def test_importance_and_coefficients_single_out_the_driver(good_result):
    for split in ("loo", "lomo"):
        rows = [r for r in good_result.importance if r.split == split]
        assert [r.metric for r in rows] == ["good", "noise"]
        assert rows[0].r2_drop > 0.15 and abs(rows[1].r2_drop) < 0.02
        assert rows[0].mae_increase > 0
    coef = {c.feature_set: c for c in good_result.coefficients}
    assert set(coef[BASELINE].coef) == {"log(val_ppl)"}
    aug = coef[AUGMENTED].coef
    assert aug["log(val_ppl)"] < 0 and aug["good"] > 0
    assert abs(aug["noise"]) < 0.1 * aug["good"]
    assert coef[AUGMENTED].alpha in DEFAULT_ALPHAS


def test_permutation_is_seeded(units):
    kw = dict(n_perm=20, importance=False, splits=("loo",))
    r1 = predict_downstream(units, ["noise"], seed=7, **kw)
    r2 = predict_downstream(units, ["noise"], seed=7, **kw)
    assert r1.improvements[0].p_r2 == r2.improvements[0].p_r2
    assert math.isnan(predict_downstream(units, ["noise"], n_perm=0, splits=("loo",)).improvements[0].p_r2)


def test_log_transform_is_explicit(units):
    r = predict_downstream(units, ["good"], log_features=(), n_perm=0, splits=("loso",), importance=False)
    assert r.columns[BASELINE] == ["val_ppl"] and r.config["log_features"] == []


# --------------------------------------------------------------------------- guard rails


def _raises(match: str, *args, **kwargs) -> str:
    kwargs.setdefault("n_perm", 0)
    with pytest.raises(LensError, match=match) as e:
        predict_downstream(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_guard_too_few_units(units):
    msg = _raises(r"only 4 units for 2 features \(perplexity \+ 1 metric\); need at least 5", units[:4], ["good"])
    assert "add runs or checkpoints, or use fewer metrics" in msg
    _raises(r"only 5 units for 4 features.*need at least 7", units[:5], ["good", "noise", "x"])


def test_guard_missing_or_nan_feature(units):
    bad = list(units)
    bad[2] = replace(bad[2], features={"val_ppl": 30.0, "noise": 0.1})
    bad[5] = replace(bad[5], features={**bad[5].features, "good": float("nan")})
    msg = _raises(r"feature 'good' is missing or NaN for 2 of 18 units", bad, ["good"])
    assert bad[2].run_id in msg and bad[5].run_id in msg and "leave 'good' out" in msg
    bad = [replace(units[0], features={**units[0].features, "val_ppl": -1.0}), *units[1:]]
    _raises(r"'val_ppl' must be > 0 to take its log", bad, ["good"])


def test_guard_single_group(units):
    one_method = [replace(u, method="m0", run_id=f"r{i}") for i, u in enumerate(units)]
    msg = _raises(r"split 'lomo' leaves one method out but all units share method 'm0'", one_method, ["good"])
    assert "use split 'loo'" in msg
    one_scale = [replace(u, scale="s") for u in units]
    _raises(r"split 'loso' .* all units share scale 's'", one_scale, ["good"], splits=("loo", "loso"))
    _raises(r"unknown split 'kfold'; valid splits: loo, lomo, loso", units, ["good"], splits=("kfold",))
    two = [replace(u, method="a" if i < 16 else "b") for i, u in enumerate(units)]
    _raises(r"leaving out method 'a' leaves 2 training units", two, ["good"])


def test_guard_constant_target_and_bad_inputs(units):
    flat = [replace(u, target=0.5) for u in units]
    _raises(r"target is constant \(0.5\) across all 18 units", flat, ["good"])
    _raises(r"target is missing or NaN for run-m0-s", [replace(units[0], target=math.nan), *units[1:]], ["good"])
    _raises(r"no metric features given", units, [])
    _raises(r"include the perplexity feature 'val_ppl'", units, ["val_ppl"])
    _raises(r"duplicate units run-m0-s", [units[0], *units], ["good"])
    _raises(r"alphas must be a non-empty list of positive numbers", units, ["good"], alphas=[0.0, 1.0])


# --------------------------------------------------------------------------- writers


def test_report_writes_tables_and_figure(good_result, tmp_path):
    paths = write_prediction_report(good_result, tmp_path / "predict")
    names = {p.name for p in paths}
    assert names == {"cv_scores.csv", "improvement.csv", "coefficients.csv", "importance.csv", "predictions.csv",
                     "predicted_vs_actual.png"}
    out = tmp_path / "predict"
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary files left behind

    def rows(name):
        with open(out / name, newline="") as f:
            return list(csv.DictReader(f))

    scores = rows("cv_scores.csv")
    assert {(r["feature_set"], r["split"]) for r in scores} == {(f, s) for f in (BASELINE, AUGMENTED)
                                                                for s in ("loo", "lomo")}
    loo_b = next(r for r in scores if r["feature_set"] == AUGMENTED and r["split"] == "loo")
    assert float(loo_b["r2"]) == pytest.approx(good_result.score(AUGMENTED, "loo").r2) and loo_b["n"] == "18"
    preds = rows("predictions.csv")
    assert len(preds) == 18 * 4 and {"unit", "actual", "predicted"} <= set(preds[0])
    assert [r["metric"] for r in rows("importance.csv") if r["split"] == "loo"] == ["good", "noise"]
    coefs = rows("coefficients.csv")
    assert {(r["feature_set"], r["feature"]) for r in coefs} == {
        (BASELINE, "log(val_ppl)"), (AUGMENTED, "log(val_ppl)"), (AUGMENTED, "good"), (AUGMENTED, "noise")}
    imp = rows("improvement.csv")
    assert {r["split"] for r in imp} == {"loo", "lomo"} and all(float(r["p_r2"]) < 0.05 for r in imp)
    png = (out / "predicted_vs_actual.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
