"""Known answers for ES and DV (docs/study.md §2 L1/L2) and the centred-grid rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from maths_testutil import tiny_batches, tiny_model

from lowrank_lens.analysis.maths import (
    centre_index,
    direction_variance,
    expected_sharpness,
    landscape_summary,
    losses_along_directions,
    model_hessian,
    random_directions,
)
from lowrank_lens.errors import LensError


def _quadratic(P: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random symmetric (indefinite) H [P, P] and gradient g [P]."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, P, generator=g, dtype=torch.float64)
    return (A + A.T) / 2 + 3 * torch.eye(P, dtype=torch.float64), torch.randn(P, generator=g, dtype=torch.float64)


def _curves(H, grad, dirs, alphas, L0=2.5):
    # L_d(a) = L0 + a g.d + a^2/2 d^T H d, exactly: curves [D, G].
    a_ = grad @ dirs.T  # [D]
    b_ = torch.einsum("dp,pq,dq->d", dirs, H, dirs)  # [D]
    return L0 + alphas[None] * a_[:, None] + 0.5 * alphas[None] ** 2 * b_[:, None], a_, b_


def test_es_and_dv_equal_their_closed_forms_on_a_quadratic():
    H, grad = _quadratic(12, seed=0)
    dirs = torch.randn(7, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alphas = torch.tensor([-0.3, -0.2, -0.05, 0.0, 0.05, 0.2, 0.3], dtype=torch.float64)  # symmetric, non-uniform
    curves, a_, b_ = _curves(H, grad, dirs, alphas)
    pos = alphas[alphas > 0]
    assert expected_sharpness(curves, alphas) == pytest.approx(float(0.5 * (pos**2).mean() * b_.mean()), rel=1e-12)
    dv = (alphas**2).mean() * a_.var(unbiased=False) + 0.25 * (alphas**4).mean() * b_.var(unbiased=False)
    assert direction_variance(curves) == pytest.approx(float(dv), rel=1e-10)
    # The study's DV: numpy population variance per grid point, then the mean.
    assert direction_variance(curves) == pytest.approx(float(np.var(curves.numpy(), axis=0).mean()), rel=1e-12)


def test_es_rand_matches_half_trace_times_mean_alpha_squared_for_gaussian_directions():
    H, grad = _quadratic(20, seed=2)
    D = 4000
    dirs = torch.randn(D, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # unnormalised
    alphas = torch.from_numpy(np.arange(-0.003, 0.0031, 0.00025))  # the study's 25-point grid
    curves, _, _ = _curves(H, grad, dirs, alphas)
    mean_a2 = 0.00025**2 * 13 * 25 / 6  # h^2 (K+1)(2K+1)/6, K = 12
    assert float((alphas[alphas > 1e-9] ** 2).mean()) == pytest.approx(mean_a2, rel=1e-9)
    expected = 0.5 * float(torch.trace(H)) * mean_a2
    spread = 0.5 * mean_a2 * float(torch.sqrt(2 * (H @ H).trace() / D))  # std of the estimate
    assert abs(expected_sharpness(curves, alphas) - expected) < 4 * spread


def test_es_small_alpha_limit_on_a_tiny_llama_matches_hvp():
    """ES on the model = 1/2 mean_k a_k^2 mean_d d^T H d + O(a^4), with d^T H d from the HVP."""
    model = tiny_model(torch.float64)
    batches = tiny_batches()
    p0 = dict(model.named_parameters())
    dirs = random_directions(p0, 2, seed=5)
    alphas = torch.tensor([-2e-3, -1e-3, 0.0, 1e-3, 2e-3], dtype=torch.float64)
    curves = losses_along_directions(model, p0, dirs, alphas, batches)
    hess = model_hessian(model, p0, batches)
    dhd = torch.stack([hess.to_flat(d) @ hess(hess.to_flat(d)) for d in dirs])  # [D]
    predicted = 0.5 * float((torch.tensor([1e-3, 2e-3]) ** 2).mean()) * float(dhd.mean())
    assert expected_sharpness(curves, alphas) == pytest.approx(predicted, rel=2e-2)


def test_grid_must_be_centred():
    assert centre_index(np.arange(-0.003, 0.0031, 0.00025)) == 12  # the study's grid, centre ~1e-19
    with pytest.raises(LensError, match="odd number"):
        centre_index(np.arange(-0.05, 0.0501, 0.004))  # the study's 26-point PCA grid (off-centre bug)
    with pytest.raises(LensError, match="not centred"):
        centre_index([-0.2, -0.1, 0.01, 0.1, 0.2])
    with pytest.raises(LensError, match="not centred"):
        centre_index([-0.3, -0.1, 0.0, 0.1, 0.2])
    with pytest.raises(LensError, match="increasing"):
        centre_index([0.1, 0.0, -0.1])
    with pytest.raises(LensError):
        expected_sharpness(torch.zeros(3, 4), [-1.0, -0.5, 0.5, 1.0])


def test_summary_reports_centre_and_minimum():
    alphas = torch.tensor([-1.0, 0.0, 1.0])
    curves = torch.tensor([[1.0, 2.0, 5.0], [3.0, 2.0, 5.0]])
    s = landscape_summary(curves, alphas)
    assert s["expected_sharpness"] == pytest.approx(1.5)  # mean curve [2, 2, 5]: (2 + 5)/2 - 2
    assert s["direction_variance"] == pytest.approx(1 / 3)
    assert (s["centre_loss"], s["min_loss"], s["centre_minus_min"]) == (2.0, 2.0, 0.0)
