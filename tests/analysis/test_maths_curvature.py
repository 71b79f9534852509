"""Hessian-vector products, Lanczos, power iteration, Hutchinson and finite differences."""

from __future__ import annotations

import pytest
import torch
from maths_testutil import same, snapshot, tiny_batches, tiny_model
from torch.func import functional_call

from lowrank_lens.analysis.maths import (
    HessianOperator,
    hutchinson_trace,
    lanczos,
    model_hessian,
    power_iteration,
    second_derivative_at_zero,
)
from lowrank_lens.errors import LensError


def _spd_with_negative(seed: int = 0) -> torch.Tensor:
    """Symmetric [8, 8] with eigenvalues 5, 3, 2, 1, 0.5, 0.1, -1, -7 (largest |lambda| is negative)."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    lam = torch.tensor([5, 3, 2, 1, 0.5, 0.1, -1, -7], dtype=torch.float64)
    return q @ torch.diag(lam) @ q.T


def _regression():
    """Linear regression y ~ X w + b with MSE: H = 2/N [X 1]^T [X 1], known exactly."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(40, 1, generator=g, dtype=torch.float64)
    lin = torch.nn.Linear(5, 1).double()
    params = {n: p.detach() for n, p in lin.named_parameters()}  # weight [1, 5], bias [1]

    def loss(p):
        return ((functional_call(lin, dict(p), (X,)) - y) ** 2).mean()

    Xa = torch.cat([X, torch.ones(40, 1, dtype=torch.float64)], dim=1)  # flat order: weight, then bias
    return loss, params, 2.0 / 40 * Xa.T @ Xa


@pytest.mark.parametrize("method", ["double_backward", "jvp"])
def test_hvp_on_linear_regression_equals_the_known_hessian(method):
    loss, params, H = _regression()
    op = HessianOperator(loss, params, method=method)
    for i in range(6):
        torch.testing.assert_close(op(torch.eye(6, dtype=torch.float64)[i]), H[i])
    # the same loss split into two terms (as per-batch streaming does) gives the same operator
    halves = HessianOperator([lambda p: loss(p) / 2, lambda p: loss(p) / 2], params, method=method)
    v = torch.arange(6, dtype=torch.float64)
    torch.testing.assert_close(halves(v), H @ v)
    top = lanczos(op, op.dim, 6)
    assert top.top == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-10)
    tr = hutchinson_trace(op, op.dim, n_probes=200, seed=1)
    assert tr.ci_low < float(torch.trace(H)) < tr.ci_high


def test_lanczos_power_and_hutchinson_on_an_explicit_matrix():
    A = _spd_with_negative()
    lz = lanczos(lambda v: A @ v, 8, 8, seed=3)
    assert lz.top == pytest.approx(5.0, rel=1e-10) and lz.bottom == pytest.approx(-7.0, rel=1e-10)
    torch.testing.assert_close(lz.ritz_values, torch.tensor([5, 3, 2, 1, 0.5, 0.1, -1, -7], dtype=torch.float64))
    # the basis may live elsewhere (host memory, for a GPU run): same Ritz values, bit for bit here
    torch.testing.assert_close(lanczos(lambda v: A @ v, 8, 8, seed=3, basis_device="cpu").ritz_values,
                               lz.ritz_values, rtol=0, atol=0)
    no_reorth = lanczos(lambda v: A @ v, 8, 8, seed=3, reorthogonalize=False)
    assert no_reorth.top == pytest.approx(5.0, rel=1e-6)
    pw = power_iteration(lambda v: A @ v, 8, 500, tol=1e-12, seed=3)
    assert pw.converged and pw.eigenvalue == pytest.approx(-7.0, rel=1e-6)  # largest |lambda|, not lambda_max
    D = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))
    exact = hutchinson_trace(lambda v: D @ v, 8, n_probes=3, seed=0)
    assert exact.mean == pytest.approx(36.0) and exact.stderr == 0.0  # Rademacher is exact on a diagonal
    est = hutchinson_trace(lambda v: A @ v, 8, n_probes=400, seed=2)
    assert est.n_probes == 400 and est.ci_low < float(torch.trace(A)) < est.ci_high
    assert hutchinson_trace(lambda v: A @ v, 8, 10, seed=2).samples.numel() == 10  # fixed count, no early stop
    with pytest.raises(LensError):
        hutchinson_trace(lambda v: A @ v, 8, n_probes=1)


def test_hvp_on_a_tiny_llama_is_symmetric_and_both_methods_agree():
    model = tiny_model()
    batches = tiny_batches()
    live = dict(model.named_parameters())
    before = snapshot(live)
    op = model_hessian(model, live, batches)  # default sdpa attention: runs under the MATH kernel
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(op.dim, generator=g), torch.randn(op.dim, generator=g)
    hv, hw = op(v), op(w)
    assert float(w @ hv) == pytest.approx(float(v @ hw), rel=1e-4)
    torch.testing.assert_close(model_hessian(model, live, batches, method="jvp")(v), hv, rtol=1e-4, atol=1e-5)
    assert same(snapshot(live), before)


def test_second_derivative_at_zero():
    alphas = torch.linspace(-0.2, 0.2, 5)
    quad = 1 + 0.3 * alphas + 2.5 * alphas**2
    assert float(second_derivative_at_zero(quad, alphas)) == pytest.approx(5.0, rel=1e-6)
    curves = torch.stack([torch.cos(3 * alphas.double()), torch.exp(alphas.double())])  # [2, G]
    five = second_derivative_at_zero(curves, alphas, stencil=5)
    exact = torch.tensor([-9.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(five, exact, rtol=2e-3, atol=0)
    three = second_derivative_at_zero(curves, alphas, stencil=3)
    assert bool(((three - exact).abs() > (five - exact).abs()).all())  # O(h^2) vs O(h^4)
    with pytest.raises(LensError):
        second_derivative_at_zero(quad[:-1], alphas[:-1])


def test_hutchinson_interval_covers_at_its_level_on_a_known_hessian():
    """2000 independent 10-probe estimates of tr(H) for a dense H: the 95% interval must contain the true
    trace 93.5-96.5% of the time (binomial sd 0.5%). The normal-quantile interval covered 91.4% here."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 50, generator=g, dtype=torch.float64)
    H = X @ X.T / 50
    true = float(torch.trace(H))
    hits = 0
    for seed in range(2000):
        est = hutchinson_trace(lambda v: H @ v, 50, n_probes=10, seed=seed)
        hits += est.ci_low <= true <= est.ci_high
    assert 0.935 <= hits / 2000 <= 0.965, hits / 2000



def test_the_krylov_basis_moves_to_host_memory_when_it_would_crowd_the_gpu(monkeypatch):
    """The placement rule (the GPU's free memory is the only thing faked: this machine has no GPU): 20 fp32
    vectors of a 350m model are 29.4 GB. Beside the ~29 GB HVP graph of batch 16 they fit an 80 GB GPU's
    free memory; beside batch 64's ~116 GB graph they do not fit even a 141 GB GPU, so they go to host
    memory. Off-GPU the basis stays with the vectors."""
    from lowrank_lens.analysis.metrics.curvature import krylov_home

    cpu, gpu, p350, gb = torch.device("cpu"), torch.device("cuda"), 368_000_000, 10**9
    assert krylov_home(p350, 20, torch.float32, cpu, 116 * gb) == cpu
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (78 * 2**30, 80 * 2**30))
    assert krylov_home(p350, 20, torch.float32, gpu, 29 * gb) == gpu
    assert krylov_home(p350, 20, torch.float32, gpu, 116 * gb) == cpu
    assert krylov_home(p350, 20, torch.float32, gpu, 55 * gb) == cpu  # 84 GB > 0.9 x 78 GiB
    assert krylov_home(p350, 0, torch.float32, gpu, 116 * gb) == gpu  # no re-orthogonalisation: no basis
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (139 * 2**30, 141 * 2**30))
    assert krylov_home(p350, 20, torch.float32, gpu, 116 * gb) == cpu
    assert krylov_home(p350, 20, torch.float32, gpu, 29 * gb) == gpu


def test_lanczos_asks_where_its_basis_goes_after_the_first_product():
    """basis_device as a function: called once, after the first HVP (so its memory can be measured), and
    the Ritz values are the same as with the basis placed up front."""
    H = torch.diag(torch.linspace(-1, 3, 40, dtype=torch.float64))
    calls: list[int] = []

    def matvec(v):
        calls.append(0)
        return H @ v

    def where():
        asked.append(len(calls))
        return torch.device("cpu")

    asked: list[int] = []
    late = lanczos(matvec, 40, 12, seed=3, basis_device=where)
    early = lanczos(lambda v: H @ v, 40, 12, seed=3, basis_device="cpu")
    assert asked == [1]
    assert torch.equal(late.ritz_values, early.ritz_values)
