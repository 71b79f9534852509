"""Known answers for the landscape metrics (docs/study.md §2 L1-L5): landscape_random, landscape_pca and
trajectory_pca on the tiny runs (nano shapes, 8 evaluation rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank_lens.analysis.context import Context, EvalSettings
from lowrank_lens.analysis.maths import (
    direction_variance,
    expected_sharpness,
    hutchinson_trace,
    mean_nll,
    model_hessian,
    second_derivative_at_zero,
    trajectory_pca,
)
from lowrank_lens.analysis.maths.loss import eval_mode
from lowrank_lens.analysis.metrics.landscape_pca import LandscapePCA, LandscapePCAConfig
from lowrank_lens.analysis.metrics.landscape_random import (
    LandscapeRandom,
    LandscapeRandomConfig,
    build_direction,
    native_params,
)
from lowrank_lens.analysis.metrics.trajectory_pca import TrajectoryPCAConfig, TrajectoryPCAMetric
from lowrank_lens.analysis.runner import build_metrics
from lowrank_lens.analysis.subjects import RunRef, enumerate_subjects
from lowrank_lens.errors import LensError

SETTINGS = EvalSettings(sequences=8, batch_size=8)


def _subject(run_dir, kind: str = "checkpoint", step: int = -1):
    run = RunRef.open(run_dir)
    (subject,) = enumerate_subjects(kind, [run], [step] if kind == "checkpoint" else None, None)
    return subject


def _centre_nll(ctx: Context, subject) -> float:
    model = ctx.load(subject.checkpoints[-1]).model
    with torch.no_grad(), eval_mode(model):
        return float(mean_nll(model, ctx.batches(subject.home)))


@pytest.mark.parametrize("method", ["relora", "sltrain"])  # frozen W0; 1-D sparse values + index buffer
def test_random_scalars_are_the_maths_functions_and_centre_is_the_mean_nll(tiny_runs, method):
    ctx, subject = Context(SETTINGS), _subject(tiny_runs[method])
    r = LandscapeRandom(LandscapeRandomConfig(directions=3, points=5, alpha_max=0.002)).compute(subject, ctx)
    alphas, curves = r.arrays["alphas"], torch.from_numpy(r.arrays["curves"])
    np.testing.assert_allclose(alphas, np.linspace(-0.002, 0.002, 5), rtol=0, atol=1e-18)
    assert alphas[2] == 0.0 and curves.shape == (3, 5)
    assert r.scalars["es"] == expected_sharpness(curves, alphas)
    assert r.scalars["dv"] == direction_variance(curves)
    assert r.scalars["d2_at_zero"] == pytest.approx(float(second_derivative_at_zero(curves.mean(0), alphas)))
    centre = _centre_nll(ctx, subject)
    assert curves[:, 2].tolist() == [centre] * 3 and r.scalars["loss_centre"] == centre
    assert r.scalars["centre_minus_min"] == pytest.approx(centre - float(curves.mean(0).min()))
    model = ctx.load(subject.checkpoints[0]).model
    assert r.info["n_parameters"] == sum(p.numel() for p in model.parameters())  # frozen ones included


def test_random_directions_are_seeded(tiny_runs):
    ctx, subject = Context(SETTINGS), _subject(tiny_runs["full-rank"])

    def curves(seed: int) -> np.ndarray:
        cfg = LandscapeRandomConfig(directions=2, points=3, seed=seed)
        return LandscapeRandom(cfg).compute(subject, ctx).arrays["curves"]

    a = curves(0)
    np.testing.assert_array_equal(a, curves(0))
    assert not np.array_equal(a[:, [0, 2]], curves(1)[:, [0, 2]])


def test_filter_normalised_directions_have_the_weights_row_norms(tiny_runs):
    params = native_params(Context(SETTINGS).load(_subject(tiny_runs["sltrain"]).checkpoints[0]).model)
    d = build_direction(params, LandscapeRandomConfig(norm="filter"), 3)
    assert d.keys() == params.keys()
    for n, w in params.items():
        if w.ndim >= 2:
            torch.testing.assert_close(d[n].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6)
        else:  # one_d 'auto' with filter: gains (and SLTrain's 1-D sparse values) do not move
            assert not d[n].any()
    radial = build_direction(params, LandscapeRandomConfig(norm="layer", one_d="radial"), 0)
    for n, w in params.items():
        if w.ndim >= 2:
            assert float(radial[n].norm()) == pytest.approx(float(w.norm()), rel=1e-5)
        else:
            assert torch.equal(radial[n], w)


def test_grids_must_be_odd_and_modes_valid():
    for make in (lambda: LandscapeRandomConfig(points=24), lambda: LandscapePCAConfig(points=26),
                 lambda: TrajectoryPCAConfig(points=4),
                 lambda: build_metrics(["landscape_random"], ["landscape_random.points=24"])):
        with pytest.raises(LensError, match="odd"):
            make()
    with pytest.raises(LensError, match="gaussian"):
        LandscapeRandomConfig(norm="filter", one_d="gaussian")
    with pytest.raises(LensError, match="variant"):
        LandscapePCAConfig(variant="pca")
    assert LandscapeRandomConfig().one_d == "gaussian" and LandscapeRandomConfig(norm="filter").one_d == "zero"
    assert LandscapePCAConfig().alpha_max == 0.05 and LandscapePCAConfig(variant="svd_unit").alpha_max == 0.25
    assert LandscapePCAConfig(k=10, ks=(1, 5, 20)).reported() == [1, 5, 10]


def test_pca_scalars_are_the_maths_functions_on_the_component_curves(tiny_runs):
    ctx, subject = Context(SETTINGS), _subject(tiny_runs["cola"])
    r = LandscapePCA(LandscapePCAConfig(k=3, ks=(1, 2, 5), points=5)).compute(subject, ctx)
    alphas, curves = r.arrays["alphas"], torch.from_numpy(r.arrays["curves"])
    assert curves.shape == (3, 5) and alphas[-1] == 0.05
    assert r.scalars["es_pca1"] == expected_sharpness(curves[:1], alphas)
    assert r.scalars["es_pca2"] == expected_sharpness(curves[:2], alphas)
    assert r.scalars["es_pca3"] == expected_sharpness(curves[:3], alphas)
    assert r.scalars["dv_pca3"] == direction_variance(curves)
    assert "dv_pca1" not in r.scalars and "es_pca5" not in r.scalars
    assert r.scalars["d2_at_zero_pca1"] == pytest.approx(float(second_derivative_at_zero(curves[0], alphas)))
    assert curves[:, 2].tolist() == [_centre_nll(ctx, subject)] * 3
    assert (curves[0] != curves[1]).any()  # distinct singular components


def test_trajectory_pca_axes_and_scalars(tiny_runs):
    ctx, subject = Context(SETTINGS), _subject(tiny_runs["galore"], kind="run")
    assert len(subject.checkpoints) == 4
    r = TrajectoryPCAMetric(TrajectoryPCAConfig(components=2, points=5)).compute(subject, ctx)
    states = [native_params(ctx.load(c, dtype=torch.float32).model) for c in subject.checkpoints]
    pca = trajectory_pca(states, 2)
    np.testing.assert_allclose(r.arrays["explained"], pca.explained_variance_ratio.numpy())
    assert r.scalars["explained_pc1"] >= r.scalars["explained_pc2"] > 0
    extent = float(pca.coords[:, 0].abs().max())
    assert r.scalars["alpha_max"] == pytest.approx(extent) and r.arrays["alphas"][-1] == pytest.approx(extent)
    alphas, curves = r.arrays["alphas"], torch.from_numpy(r.arrays["curves"])
    assert r.scalars["es_traj1"] == expected_sharpness(curves[:1], alphas)
    assert r.scalars["es_traj2"] == expected_sharpness(curves, alphas)
    assert r.scalars["dv_traj2"] == direction_variance(curves)
    assert curves[:, 2].tolist() == [_centre_nll(ctx, subject)] * 2
    too_many = TrajectoryPCAMetric(TrajectoryPCAConfig(components=4, points=3)).compute(subject, ctx)
    assert too_many.skipped and not too_many.scalars


def test_es_rand_is_half_the_hessian_trace_times_mean_alpha_squared(tiny_runs):
    """Small-alpha limit of ES for unnormalised Gaussian d (maths/landscape.py): E[ES] = tr(H)/2 mean_k a_k^2.

    The tolerance combines both estimators' standard errors (ES over directions, Hutchinson over probes)
    at 4 sigma, plus 3% for the O(alpha^4) remainder and roundoff. alpha is not taken smaller: HF's
    RMSNorm computes in fp32 even in an fp64 model, and the centre point's roundoff (~1e-6 in L, shared
    by every rise) would then bias ES (measured: +4% at alpha_max 1e-3, +50% at 2e-4)."""
    ctx = Context(EvalSettings(sequences=8, batch_size=8, dtype="fp64"))
    subject = _subject(tiny_runs["full-rank"])
    a = 2e-3
    r = LandscapeRandom(LandscapeRandomConfig(directions=48, points=5, alpha_max=a)).compute(subject, ctx)
    model = ctx.load(subject.checkpoints[0]).model
    hess = model_hessian(model, native_params(model), ctx.batches(subject.home))
    tr = hutchinson_trace(hess, hess.dim, n_probes=24, seed=0)
    mean_a2 = (a**2 / 4 + a**2) / 2  # positive offsets a/2 and a
    predicted, pred_se = 0.5 * mean_a2 * tr.mean, 0.5 * mean_a2 * tr.stderr
    tol = 4 * float(np.hypot(r.scalars["es_stderr"], pred_se)) + 0.03 * abs(predicted)
    assert predicted > 0 and abs(r.scalars["es"] - predicted) < tol, (r.scalars, tr.mean, tr.stderr)
    # The mean curve's second difference at 0 estimates the same trace (stderr of mean d^T H d).
    d2_se = r.scalars["es_stderr"] / (0.5 * mean_a2)
    assert abs(r.scalars["d2_at_zero"] - tr.mean) < 4 * float(np.hypot(tr.stderr, d2_se)) + 0.05 * tr.mean


def test_evaluation_defaults_to_fp32_on_a_gpu_too(monkeypatch):
    """auto was bf16 on CUDA (the study's choice), which moved ES_rand by +28%; now fp32 on every device."""
    from lowrank_lens.analysis import context

    monkeypatch.setattr(context, "parse_device", lambda device: torch.device("cuda"))
    assert Context(EvalSettings()).dtype == torch.float32
    assert Context(EvalSettings(dtype="bf16")).dtype == torch.bfloat16  # still there when asked for
