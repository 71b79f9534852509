"""Activation similarity: L2, relative L2, cosine and linear CKA (docs/study.md §2, A1-A4)."""

from __future__ import annotations

import pytest
import torch

from lowrank_lens.analysis.maths import (
    LayerwiseSimilarity,
    SimilarityAccumulator,
    activation_similarity,
    linear_cka,
)


def _acts(n: int = 300, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g) @ torch.randn(h, h, generator=g) + 3.0  # correlated, non-zero mean
    y = x @ torch.randn(h, h, generator=g) * 0.3 + torch.randn(n, h, generator=g)
    return x, y


def _gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """The N x N kernel form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, centred by C."""
    x, y = x.double(), y.double()
    c = torch.eye(x.shape[0], dtype=torch.float64) - 1.0 / x.shape[0]
    k, l_ = c @ x @ x.T @ c, c @ y @ y.T @ c
    return float((k * l_).sum() / ((k * k).sum() * (l_ * l_).sum()).sqrt())


def test_cka_identities():
    x, y = _acts()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(5)))
    assert linear_cka(x, 5.0 * x @ q) == pytest.approx(1.0, abs=1e-6)  # orthogonal + isotropic scale
    base = linear_cka(x, y)
    assert 0.0 < base < 1.0
    assert linear_cka(x, y @ q * 0.1 + 7.0) == pytest.approx(base, rel=1e-6)  # + a shift (centring)
    assert base == pytest.approx(_gram_cka(x, y), rel=1e-9)
    assert linear_cka(x, y[:, :5]) == pytest.approx(_gram_cka(x, y[:, :5]), rel=1e-9)  # feature dims may differ


def test_l2_and_cosine_known_values():
    x, _ = _acts()
    same = activation_similarity(x, x)
    assert same["mean_l2"] == 0.0 and same["cosine"] == pytest.approx(1.0) and same["cka"] == pytest.approx(1.0)
    neg = activation_similarity(x, -x)
    norms = x.double().norm(dim=1)
    assert neg["cosine"] == pytest.approx(-1.0)
    assert neg["mean_l2"] == pytest.approx(2 * float(norms.mean()))
    assert neg["relative_l2"] == pytest.approx(2.0)
    assert neg["baseline_norm"] == pytest.approx(float(norms.mean())) and neg["n_tokens"] == 300


def test_mask_drops_rows_and_streaming_equals_one_shot():
    x, y = _acts(n=240)
    xb, yb = x.reshape(4, 60, 16), y.reshape(4, 60, 16)  # [B, T, H]
    mask = torch.ones(4, 60, dtype=torch.bool)
    mask[1, 40:] = False
    mask[3, 10:] = False
    keep = mask.reshape(-1)
    want = activation_similarity(x[keep], y[keep])
    assert activation_similarity(xb, yb, mask) == pytest.approx(want, rel=1e-9)
    acc = SimilarityAccumulator()
    for b in range(4):  # one batch at a time
        acc.update(xb[b : b + 1], yb[b : b + 1], mask[b : b + 1])
    assert acc.result() == pytest.approx(want, rel=1e-9)
    assert activation_similarity(xb, yb) != pytest.approx(want, rel=1e-9)  # unmasked: padding counts
    layers = LayerwiseSimilarity(2)
    layers.update([xb, xb], [yb, xb], mask)
    res = layers.result()
    assert res[0] == pytest.approx(want, rel=1e-9) and res[1]["cka"] == pytest.approx(1.0)


def test_streaming_cka_is_stable_with_a_large_mean():
    x, y = _acts(n=400)
    want = linear_cka(x.double(), y.double())
    acc = SimilarityAccumulator()
    for xs, ys in zip((x.double() + 1e4).split(100), (y.double() - 1e4).split(100), strict=True):
        acc.update(xs, ys)
    assert acc.cka() == pytest.approx(want, rel=1e-8)
