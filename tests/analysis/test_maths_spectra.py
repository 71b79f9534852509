"""Spectral metrics of matrices with known singular values (docs/study.md §2, S1-S6)."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lens.analysis.maths import mean_metrics, singular_values, spectral_metrics, update_norms
from lowrank_lens.errors import LensError


def _with_spectrum(s: list[float], m: int, n: int, seed: int) -> torch.Tensor:
    """U diag(s) V^T, [m, n], with random orthonormal U, V (s padded with zeros to min(m, n))."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    sv = torch.zeros(k, dtype=torch.float64)
    sv[: len(s)] = torch.tensor(s, dtype=torch.float64)
    return u @ torch.diag(sv) @ v.T


def test_metrics_of_a_known_spectrum():
    s = [4.0, 2.0, 1.0, 1.0, 0.05]  # rank 5 of n = 8
    w = _with_spectrum(s, 12, 8, seed=0)
    got = spectral_metrics(singular_values([w])[0])
    p = torch.tensor(s, dtype=torch.float64) / sum(s)
    assert got["rank"] == 5 and got["rank_ratio"] == pytest.approx(5 / 8)
    assert got["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    assert got["effective_rank_score"] == pytest.approx(got["effective_rank"] / 8)
    assert got["stable_rank"] == pytest.approx((16 + 4 + 1 + 1 + 0.0025) / 16, rel=1e-9)
    assert got["spectral_gap"] == pytest.approx(0.5) and got["singular_value_ratio"] == pytest.approx(0.5)
    assert got["n_sv_above"] == 4 and got["n_sv_above_ratio"] == pytest.approx(0.5)
    flat = spectral_metrics(torch.ones(6))  # equal singular values: erank = rank = 6, srank = 6, gap 0
    assert flat["effective_rank"] == pytest.approx(6) and flat["stable_rank"] == pytest.approx(6)
    assert flat["spectral_gap"] == 0.0
    one = spectral_metrics(torch.tensor([3.0, 0.0, 0.0]))
    assert (one["rank"], one["effective_rank"], one["stable_rank"], one["spectral_gap"]) == (1, 1.0, 1.0, 1.0)
    zero = spectral_metrics(torch.zeros(4))
    assert zero["rank"] == 0 and math.isnan(zero["effective_rank"])
    avg = mean_metrics([one, zero])
    assert avg["rank"] == 0.5 and avg["effective_rank"] == 1.0  # NaN skipped


def test_batched_equals_per_matrix_and_wide_equals_its_transpose():
    mats = {"a": _with_spectrum([3, 2, 1], 10, 6, 1), "b": _with_spectrum([5, 1], 10, 6, 2),
            "wide": _with_spectrum([7, 3, 2, 1], 6, 10, 3), "c": torch.randn(4, 4, dtype=torch.float64)}
    batched = singular_values(mats, max_batch=8)
    for name, w in mats.items():
        alone = singular_values([w])[0]
        torch.testing.assert_close(batched[name], alone)
        torch.testing.assert_close(alone, torch.linalg.svdvals(w))
    torch.testing.assert_close(singular_values([mats["wide"].T])[0], singular_values([mats["wide"]])[0])
    assert batched["wide"].numel() == 6
    torch.testing.assert_close(batched["b"][:3], torch.tensor([5.0, 1.0, 0.0], dtype=torch.float64))
    assert singular_values([torch.ones(3, 3, dtype=torch.float32)])[0].dtype == torch.float64  # fp64 on CPU


def test_update_norms():
    before = {"x": torch.tensor([[3.0, 0.0], [0.0, 4.0]]), "y": torch.zeros(2, 2)}
    after = {"x": torch.tensor([[3.0, 1.0], [0.0, 4.0]]), "y": torch.full((2, 2), 0.5)}
    res = update_norms(before, after)
    assert res.fro == {"x": pytest.approx(1.0), "y": pytest.approx(1.0)}
    assert res.relative["x"] == pytest.approx(0.2) and res.relative["y"] == math.inf
    assert res.global_ratio == pytest.approx(math.sqrt(2) / 5)  # sqrt(1 + 1) / sqrt(25 + 0)


def test_rank_tolerance_is_relative_so_an_fp32_low_rank_product_has_its_rank():
    """B @ A of rank 8 computed and stored in fp32: its 56 trailing singular values are fp32 rounding
    noise (~1e-7 * s_1), far above the study's absolute 1e-12, which read it as full rank (64)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 8, generator=g) @ torch.randn(8, 96, generator=g)  # fp32
    s = singular_values([w])[0]
    assert float(s[8]) > 1e-12  # the noise the absolute rule counted
    assert spectral_metrics(s, max_dim=96)["rank"] == 8
    assert spectral_metrics(s, max_dim=96, tol=1e-12)["rank"] == 64  # the study's rule, as an option


def test_zero_matrix_rule_skip_by_default_zero_as_the_study():
    one = spectral_metrics(torch.tensor([3.0, 0.0, 0.0]))
    zero_skip = spectral_metrics(torch.zeros(3))
    zero_study = spectral_metrics(torch.zeros(3), zero_matrix="zero")
    assert math.isnan(zero_skip["effective_rank"]) and zero_study["effective_rank"] == 0.0
    assert mean_metrics([one, zero_skip])["effective_rank"] == 1.0
    assert mean_metrics([one, zero_study])["effective_rank"] == 0.5
    with pytest.raises(LensError, match="zero_matrix"):
        spectral_metrics(torch.zeros(3), zero_matrix="nan")
