"""Random, weight-SVD and trajectory-PCA directions (docs/study.md §2 L1-L5; docs/ecosystem.md §2.1)."""

from __future__ import annotations

import pytest
import torch
from maths_testutil import same, tiny_model

from lowrank_lens.analysis.maths import (
    normalize_direction,
    random_direction,
    random_directions,
    trajectory_pca,
    weight_svd_directions,
)
from lowrank_lens.analysis.maths.directions import SVDDirections
from lowrank_lens.errors import LensError


@pytest.fixture(scope="module")
def params() -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in tiny_model().named_parameters()}


def test_filter_normalised_rows_have_the_weights_row_norms(params):
    d = random_direction(params, seed=0, norm="filter")
    for n, w in params.items():
        if w.ndim == 1:
            assert torch.count_nonzero(d[n]) == 0  # default one_d for filter: zero (Li et al.'s biasbn)
        else:
            torch.testing.assert_close(d[n].norm(dim=1), w.norm(dim=1), rtol=1e-5, atol=1e-6)


def test_layer_norm_and_one_d_modes(params):
    d = random_direction(params, seed=0, norm="layer", one_d="radial")
    for n, w in params.items():
        if w.ndim == 1:
            assert torch.equal(d[n], w)
        else:
            assert float(d[n].norm()) == pytest.approx(float(w.norm()), rel=1e-5)
    raw = random_direction(params, seed=0)  # the study's default: unnormalised Gaussian everywhere
    gain = "model.norm.weight"
    assert raw[gain].std() > 0.5 and not torch.equal(raw[gain], params[gain])
    with pytest.raises(LensError, match="gaussian"):
        random_direction(params, seed=0, norm="filter", one_d="gaussian")
    with pytest.raises(LensError, match="norm"):
        random_direction(params, seed=0, norm="model")


def test_filter_normalisation_is_per_slice_along_dim0():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    d = normalize_direction({"w": torch.tensor([[1.0, 0.0], [2.0, 2.0]])}, {"w": w}, "filter")["w"]
    torch.testing.assert_close(d, torch.tensor([[5.0, 0.0], [2 ** -0.5, 2 ** -0.5]]))


def test_seeds_regenerate_identical_directions(params):
    a = random_directions(params, 3, seed=11, norm="filter")
    b = random_directions(params, 3, seed=11, norm="filter")
    assert all(same(x, y) for x, y in zip(a, b, strict=True))
    assert same(random_direction(params, seed=11, index=2, norm="filter"), a[2])  # one direction alone
    assert not torch.equal(a[0]["lm_head.weight"], a[1]["lm_head.weight"])
    assert not torch.equal(random_direction(params, seed=12)["lm_head.weight"],
                           random_direction(params, seed=11)["lm_head.weight"])
    # A tensor's values do not depend on which other tensors are in the dict.
    sub = random_direction({"lm_head.weight": params["lm_head.weight"]}, seed=11, index=0, norm="filter")
    assert torch.equal(sub["lm_head.weight"], a[0]["lm_head.weight"])


def test_weight_svd_variants(params):
    name, w = "model.layers.0.mlp.down_proj.weight", params["model.layers.0.mlp.down_proj.weight"]  # wide
    unit = weight_svd_directions(params, 3, "svd_unit")
    sigma = weight_svd_directions(params, 3, "svd_sigma")
    s = torch.linalg.svdvals(w.double())
    for k in range(3):
        assert float(unit[k][name].norm()) == pytest.approx(1.0, rel=1e-5)  # unit rank-1 slice
        assert torch.linalg.matrix_rank(unit[k][name].double(), rtol=1e-5) == 1
        assert float(sigma[k][name].norm()) == pytest.approx(float(s[k]), rel=1e-5)
        assert torch.equal(unit[k]["model.norm.weight"], params["model.norm.weight"])  # A: radial
        assert torch.count_nonzero(sigma[k]["model.norm.weight"]) == 0  # B: zero
    full = weight_svd_directions({name: w}, min(w.shape), "svd_sigma")
    torch.testing.assert_close(sum(c[name] for c in full), w, atol=1e-5, rtol=1e-5)  # sum_k s_k u_k v_k^T = W
    assert torch.count_nonzero(weight_svd_directions({"m": torch.randn(3, 2)}, 3, "svd_unit")[2]["m"]) == 0
    with pytest.raises(LensError, match="variant"):
        weight_svd_directions(params, 1, "svd")


def test_svd_directions_keep_only_the_top_factors_and_build_one_direction_at_a_time(params):
    """What landscape_pca holds: k singular pairs per matrix (k (m + n) + k numbers), not k full directions;
    each component is built on request, equal to the same slice of an SVD of its own."""
    k = 2
    lazy = SVDDirections(params, k, "svd_sigma")
    kept = sum(t.numel() for f in lazy.factors.values() for t in f)
    matrices = [w for w in params.values() if w.ndim > 1]
    assert kept == sum(k * (w.shape[0] + w[0].numel()) + k for w in matrices)
    assert len(lazy) == k
    name = "model.layers.0.mlp.down_proj.weight"
    u, s, vh = torch.linalg.svd(params[name].double(), full_matrices=False)
    assert torch.equal(lazy[1][name], (torch.outer(u[:, 1], vh[1]) * s[1]).to(params[name].dtype))
    with pytest.raises(IndexError):
        lazy[k]


def test_trajectory_pca_equals_pca_on_the_stacked_rows():
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (5, 4), "b": (7,), "c": (3, 2, 2)}
    final = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    ckpts = [{n: t + torch.randn(t.shape, generator=g, dtype=torch.float64) * (i + 1) for n, t in final.items()}
             for i in range(5)] + [final]
    res = trajectory_pca(ckpts, n_components=3)
    X = torch.stack([torch.cat([(c[n] - final[n]).flatten() for n in shapes]) for c in ckpts])  # [6, P]
    Xc = X - X.mean(0)
    _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    for j in range(3):
        v = torch.cat([res.directions[j][n].flatten() for n in shapes])
        ref = Vh[j] * torch.sign(Vh[j][Vh[j].abs().argmax()])  # sklearn's sign rule
        torch.testing.assert_close(v, ref, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(res.coords[:, j], X @ v)
    torch.testing.assert_close(res.singular_values, S[:3])
    torch.testing.assert_close(res.explained_variance_ratio, S[:3] ** 2 / (S**2).sum())
    zero = trajectory_pca(ckpts, 2, one_d="zero")
    assert torch.count_nonzero(zero.directions[0]["b"]) == 0
    with pytest.raises(LensError, match="at most"):
        trajectory_pca(ckpts[:3], 3)
