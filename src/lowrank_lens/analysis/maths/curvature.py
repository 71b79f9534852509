"""Curvature of L at theta0: Hessian-vector products, top eigenvalue, trace, and the finite-difference
second derivative of a 1-D curve (the curvature reading of docs/study.md §2 L1/L3; Hessian metrics are the
study's `8_...` scripts, absent from its code snapshot, so this is our own, documented construction).

Hessian operators act on flat fp vectors over the parameters of params0 (in dict order), so the
eigen/trace routines below take any `matvec: Tensor[P] -> Tensor[P]`, and are tested on explicit
matrices. HF's default sdpa attention has no double-backward (nor forward-mode) kernel on CPU, so the
HVP runs under `sdpa_kernel(SDPBackend.MATH)` (docs/ecosystem.md §2.3).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import t as student_t
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...errors import LensError
from .landscape import centre_index
from .loss import Batch, eval_mode, loss_terms, prepare_batches

LossTerm = Callable[[Mapping[str, Tensor]], Tensor]
HVP_METHODS = ("double_backward", "jvp")


class HessianOperator:
    """v -> H v for H = d^2 L / d theta^2 at params0, L = sum of `terms` (each a function of a param dict).

    Each term is differentiated on its own and the products summed, so only one term's graph (one
    batch) is alive at a time. method 'double_backward' (autograd.grad twice) or 'jvp'
    (forward-over-reverse, torch.func.jvp of torch.func.grad). params0 is never written to.
    """

    def __init__(self, terms: LossTerm | Sequence[LossTerm], params0: Mapping[str, Tensor], *,
                 method: str = "double_backward", model: torch.nn.Module | None = None) -> None:
        if method not in HVP_METHODS:
            raise LensError(f"HVP method {method!r} is not one of {HVP_METHODS}")
        self.terms = [terms] if callable(terms) else list(terms)
        self.params = {n: t.detach() for n, t in params0.items()}
        self.method, self.model = method, model
        self.shapes = {n: t.shape for n, t in self.params.items()}
        self.dim = sum(t.numel() for t in self.params.values())
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device

    def to_dict(self, flat: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for n, t in self.params.items():
            out[n] = flat[i:i + t.numel()].reshape(t.shape).to(t.dtype)
            i += t.numel()
        return out

    def to_flat(self, d: Mapping[str, Tensor | None]) -> Tensor:
        return torch.cat([(d[n] if d[n] is not None else torch.zeros_like(t)).reshape(-1)
                          for n, t in self.params.items()])

    def _hvp_term(self, term: LossTerm, v: dict[str, Tensor]) -> dict[str, Tensor | None]:
        if self.method == "jvp":
            _, hv = torch.func.jvp(torch.func.grad(term), (self.params,), (v,))
            return hv
        p = {n: t.detach().requires_grad_(True) for n, t in self.params.items()}  # fresh leaves, same storage
        grads = torch.autograd.grad(term(p), list(p.values()), create_graph=True, allow_unused=True)
        dot = sum((g * v[n]).sum() for n, g in zip(p, grads, strict=True) if g is not None)
        if not isinstance(dot, Tensor) or not dot.requires_grad:
            return dict.fromkeys(p)  # L is linear in these parameters: H v = 0
        hv = torch.autograd.grad(dot, list(p.values()), allow_unused=True)
        return dict(zip(p, hv, strict=True))

    def __call__(self, v_flat: Tensor) -> Tensor:
        v = self.to_dict(v_flat.to(self.device))
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        ctx = eval_mode(self.model) if self.model is not None else contextlib.nullcontext()
        with ctx, sdpa_kernel(SDPBackend.MATH):
            for term in self.terms:
                total += self.to_flat(self._hvp_term(term, v)).detach()
        return total.to(v_flat.dtype)


def model_hessian(model: torch.nn.Module, params0: Mapping[str, Tensor], batches: Iterable[Batch], *,
                  method: str = "double_backward") -> HessianOperator:
    """Hessian operator of the token-weighted NLL (loss.py) of `model` on `batches`, w.r.t. params0."""
    device = next(iter(params0.values())).device
    return HessianOperator(loss_terms(model, prepare_batches(batches, device)), params0,
                           method=method, model=model)


def _unit(dim: int, seed: int, dtype: torch.dtype) -> Tensor:
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    return v / v.norm()


@dataclass
class LanczosResult:
    ritz_values: Tensor  # [m], descending: estimates of the extreme eigenvalues of H
    top: float  # largest (algebraic) Ritz value: lambda_max estimate
    bottom: float  # smallest Ritz value: lambda_min estimate
    n_iter: int


def lanczos(matvec: Callable[[Tensor], Tensor], dim: int, n_iter: int = 30, *, seed: int = 0,
            reorthogonalize: bool = True, dtype: torch.dtype = torch.float64,
            basis_device: torch.device | str | Callable[[], torch.device] | None = None) -> LanczosResult:
    """Lanczos tridiagonalisation from a seeded random start; the Ritz values bracket the spectrum.

    With full re-orthogonalisation (default) the m Krylov vectors are kept in one m x P buffer in `dtype` on
    `basis_device` (default: where the vectors live; 'cpu' moves the big buffer to host memory, so the
    accelerator holds a few vectors only; a function is asked after the first product, when the memory a
    product needs is known), allocated once; no copy of it is made. Without it only three vectors are kept;
    the extreme Ritz values still converge, possibly with spurious copies of converged ones. Stops early when
    the Krylov space is exhausted.
    """
    m = min(n_iter, dim)
    v, v_prev = _unit(dim, seed, dtype), None
    V = torch.empty(0, dim, dtype=dtype)
    alphas, betas = [], []
    for j in range(m):
        w = matvec(v).to(dtype)
        if j == 0 and reorthogonalize:
            where = basis_device() if callable(basis_device) else basis_device
            V = torch.empty(m, dim, dtype=dtype, device=where or v.device)
            V[0] = v
        v = v.to(w.device)
        a = float(w @ v)
        w = w - a * v - (betas[-1] * v_prev if v_prev is not None else 0.0)
        if reorthogonalize:
            Vj = V[: j + 1]  # a view: no copy of the basis
            for _ in range(2):  # twice is enough ("twice is enough", Parlett)
                w = w - (Vj.T @ (Vj @ w.to(V.device))).to(w.device)
        alphas.append(a)
        b = float(w.norm())
        if j == m - 1 or b <= 1e-10 * max(abs(a), 1.0):
            break
        betas.append(b)
        v_prev, v = v, w / b
        if reorthogonalize:
            V[j + 1] = v
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[:k - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(T).flip(0)
    return LanczosResult(ritz, float(ritz[0]), float(ritz[-1]), k)


@dataclass
class PowerResult:
    eigenvalue: float  # the Rayleigh quotient at the end: the eigenvalue of LARGEST |lambda|, signed
    n_iter: int
    converged: bool


def power_iteration(matvec: Callable[[Tensor], Tensor], dim: int, n_iter: int = 100, *, tol: float = 1e-6,
                    seed: int = 0, dtype: torch.dtype = torch.float64) -> PowerResult:
    """Power iteration. NOTE: it converges to the eigenvalue of largest magnitude, which is lambda_min
    when the Hessian has a negative eigenvalue larger in size than lambda_max (PyHessian's top
    eigenvalue has this meaning; docs/ecosystem.md §2.3). Use `lanczos` for lambda_max itself.
    Converged when the Rayleigh quotient changes by less than tol (relative) between iterations.
    """
    v = _unit(dim, seed, dtype)
    lam = math.nan
    for i in range(1, n_iter + 1):
        w = matvec(v).to(dtype)
        new = float(w @ v)
        norm = float(w.norm())
        if norm == 0.0:
            return PowerResult(0.0, i, True)
        v = w / norm
        if not math.isnan(lam) and abs(new - lam) <= tol * max(abs(new), 1e-30):
            return PowerResult(new, i, True)
        lam = new
    return PowerResult(lam, n_iter, False)


@dataclass
class TraceEstimate:
    mean: float
    stderr: float  # sample std (ddof 1) / sqrt(n_probes)
    ci_low: float
    ci_high: float
    confidence: float
    n_probes: int
    samples: Tensor  # [n_probes]: z_i^T H z_i


def hutchinson_trace(matvec: Callable[[Tensor], Tensor], dim: int, n_probes: int = 30, *, seed: int = 0,
                     confidence: float = 0.95, dtype: torch.dtype = torch.float64) -> TraceEstimate:
    """tr(H) ~= mean_i z_i^T H z_i with Rademacher z_i, over a FIXED number of probes (no early stop:
    PyHessian's rule stopped after 2 probes, docs/ecosystem.md §2.3). The interval is mean +- q * stderr with
    q the Student t quantile with n_probes - 1 degrees of freedom: the normal quantile covered only ~91%
    at 10 probes on a dense Hessian (the t interval: ~94.5%, tested). For a Hessian dominated by a few large
    eigenvalues z^T H z is skewed and even the t interval covers somewhat less (~90% at 10 probes).
    Var(z^T H z) = 2 sum_{i != j} H_ij^2, so a diagonal H is estimated exactly.
    """
    if n_probes < 2:
        raise LensError(f"a trace with a confidence interval needs >= 2 probes, got {n_probes}")
    return trace_estimate(hutchinson_samples(matvec, dim, range(n_probes), seed=seed, dtype=dtype), confidence)


def hutchinson_samples(matvec: Callable[[Tensor], Tensor], dim: int, probes: range, *, seed: int = 0,
                       dtype: torch.dtype = torch.float64) -> Tensor:
    """z_i^T H z_i (fp64) for the probes i in `probes` of the seeded sequence z_0, z_1, ...: the earlier
    probes are drawn and dropped, so any split of range(n) gives the samples of the whole run."""
    g = torch.Generator().manual_seed(seed)
    samples = torch.empty(len(probes), dtype=torch.float64)
    for i in range(probes.stop):
        z = (torch.randint(0, 2, (dim,), generator=g) * 2 - 1).to(dtype)
        if i >= probes.start:
            samples[i - probes.start] = float(matvec(z).to(dtype) @ z)
    return samples


def trace_estimate(samples: Tensor, confidence: float = 0.95) -> TraceEstimate:
    """Mean, stderr and Student-t interval of Hutchinson samples (see hutchinson_trace)."""
    n = samples.numel()
    mean, se = float(samples.mean()), float(samples.std() / math.sqrt(n))
    q = float(student_t.ppf(0.5 + confidence / 2, n - 1))
    return TraceEstimate(mean, se, mean - q * se, mean + q * se, confidence, n, samples)


def second_derivative_at_zero(curves: Tensor, alphas: Sequence[float] | Tensor, stencil: int = 3) -> Tensor:
    """d^2 L / d alpha^2 at alpha = 0 of curves [..., G] on a centred grid (fp64, shape [...]).

    stencil 3: (L(h) - 2 L(0) + L(-h)) / h^2, h the innermost offset, error O(h^2).
    stencil 5: (-L(2h) + 16 L(h) - 30 L(0) + 16 L(-h) - L(-2h)) / (12 h^2), needs the two innermost
    offsets to be h and 2h, error O(h^4). Along d it estimates d^T H d; on the mean curve over Gaussian
    directions it estimates tr(H) (see landscape.expected_sharpness).
    """
    a = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    c = centre_index(a)
    L = curves.double()
    if L.shape[-1] != a.numel():
        raise LensError(f"curves have {L.shape[-1]} grid points, alphas {a.numel()}")
    h = float(a[c + 1])
    if stencil == 3:
        return (L[..., c + 1] - 2 * L[..., c] + L[..., c - 1]) / h**2
    if stencil == 5:
        if c < 2 or abs(float(a[c + 2]) - 2 * h) > 1e-9 * h:
            raise LensError("the 5-point stencil needs grid offsets h and 2h around alpha = 0")
        num = -L[..., c + 2] + 16 * L[..., c + 1] - 30 * L[..., c] + 16 * L[..., c - 1] - L[..., c - 2]
        return num / (12 * h**2)
    raise LensError(f"stencil must be 3 or 5, got {stencil}")
