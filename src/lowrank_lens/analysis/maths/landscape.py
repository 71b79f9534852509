"""1-D loss landscapes: the scalars ES and DV (docs/study.md §2, L1-L5) and the engine that evaluates
L(theta0 + alpha d) for many directions d and step sizes alpha on one fixed token set.

Engine. `losses_along_directions` never writes to a parameter: every point is a functional call with a
parameter dict p0 + alpha d, and with method='vmap' the points of one direction are batched by
torch.func.vmap in chunks, so each layer runs one batched kernel for `chunk_size` perturbed models (the
parameter sets are stacked, the shared tokens are not copied). The alpha = 0 point is the same model for
every direction and is evaluated once. `losses_along_directions_reference` is the study's way (perturb
the live parameters in place, evaluate, restore; one point at a time) and is kept as the test oracle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from ...errors import LensError
from .loss import Batch, batch_nll_sum, eval_mode, mean_nll, prepare_batches, token_count

ENGINE_METHODS = ("auto", "vmap", "loop", "compiled")


def centre_index(alphas: Sequence[float] | Tensor, rtol: float = 1e-9) -> int:
    """Index c of alpha = 0 on a grid symmetric about it (alpha[c+k] = -alpha[c-k], k = 1..K).

    Raises LensError otherwise. The study's 26-point PCA grid (docs/study.md L3, variant B) fails here on
    purpose: its "centre" index 13 is alpha = +0.002, a bug we do not reproduce. Tolerance is relative to
    max |alpha| so that np.arange grids (centre ~1e-19, not exactly 0) pass.
    """
    a = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    G = a.numel()
    if G < 3 or G % 2 == 0:
        raise LensError(f"a centred alpha grid needs an odd number >= 3 of points, got {G}")
    if not bool((a[1:] > a[:-1]).all()):
        raise LensError("the alpha grid must be strictly increasing")
    c, tol = G // 2, rtol * float(a.abs().max())
    if abs(float(a[c])) > tol or float((a[c + 1:] + a[:c].flip(0)).abs().max()) > tol:
        raise LensError(f"the alpha grid is not centred on 0: middle point {float(a[c]):.6g}, "
                        f"ends {float(a[0]):.6g} and {float(a[-1]):.6g}; use a symmetric grid with 0 at its middle")
    return c


def expected_sharpness(curves: Tensor, alphas: Sequence[float] | Tensor) -> float:
    """ES of docs/study.md L1 (and L3/L4 on PCA curves): the mean symmetric rise of the mean curve.

    curves [D, G] (or [G]); Lbar = mean over directions; c = centre_index(alphas), K = (G - 1) / 2:
        ES = (1/K) sum_{k=1..K} [ (Lbar(alpha_{c+k}) + Lbar(alpha_{c-k})) / 2 - Lbar(alpha_c) ].
    Small-alpha limit. With L(theta0 + a d) = L0 + a g.d + (a^2/2) d^T H d + (a^3/6) T[d,d,d] + O(a^4),
    the odd terms cancel exactly in the symmetric average, so
        ES = (1/2) * mean_{k=1..K}(alpha_{c+k}^2) * mean_d(d^T H d) + O(alpha^4),
    exact for a quadratic loss. For unnormalised Gaussian d (L1), E[d^T H d] = tr(H), hence
    E[ES] ~= tr(H)/2 * mean_k alpha_k^2, where the mean runs over the K positive offsets only (for a
    uniform step h: h^2 (K+1)(2K+1)/6; the study's grid h = 2.5e-4, K = 12 gives 3.385e-6).
    The estimator's spread over directions is Var(d^T H d) / D = 2 tr(H^2) / D.
    """
    c = centre_index(alphas)
    mean_curve = curves.double().reshape(-1, curves.shape[-1]).mean(dim=0)  # [G]
    if mean_curve.numel() != 2 * c + 1:
        raise LensError(f"curves have {mean_curve.numel()} grid points, alphas {2 * c + 1}")
    rise = 0.5 * (mean_curve[c + 1:] + mean_curve[:c].flip(0)) - mean_curve[c]  # [K], k = 1..K
    return float(rise.mean())


def direction_variance(curves: Tensor) -> float:
    """DV of docs/study.md L2/L5: mean over grid points of the population variance across directions.

    curves [D, G]. DV = (1/G) sum_j Var_d[L_d(alpha_j)] (ddof = 0, like numpy's var; the centre point,
    where the variance is 0, is included as in the study). For a quadratic loss on a symmetric grid,
    with a_d = g.d and b_d = d^T H d: DV = mean_j(alpha_j^2) Var(a) + mean_j(alpha_j^4) Var(b) / 4
    (the alpha^3 Cov(a, b) term sums to zero on a symmetric grid).
    """
    if curves.ndim != 2:
        raise LensError(f"direction_variance needs curves shaped [D, G], got {tuple(curves.shape)}")
    return float(curves.double().var(dim=0, unbiased=False).mean())


def landscape_summary(curves: Tensor, alphas: Sequence[float] | Tensor) -> dict[str, float]:
    """ES, DV and the extra scalars the study stores: centre loss, curve minimum, centre - minimum."""
    c = centre_index(alphas)
    mean_curve = curves.double().reshape(-1, curves.shape[-1]).mean(dim=0)
    lo = float(mean_curve.min())
    return {
        "expected_sharpness": expected_sharpness(curves, alphas),
        "direction_variance": direction_variance(curves.reshape(-1, curves.shape[-1])),
        "centre_loss": float(mean_curve[c]), "min_loss": lo, "centre_minus_min": float(mean_curve[c]) - lo,
    }


def _check_inputs(params0: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]]) -> None:
    for i, d in enumerate(directions):
        extra = set(d) - set(params0)
        if extra:
            raise LensError(f"direction {i} names parameters absent from params0: {sorted(extra)[:5]}")
        for n, t in d.items():
            if t.shape != params0[n].shape:
                raise LensError(f"direction {i}[{n!r}] has shape {tuple(t.shape)}, "
                                f"the parameter {tuple(params0[n].shape)}")


def _device(params0: Mapping[str, Tensor], model: torch.nn.Module) -> torch.device:
    first = next(iter(params0.values()), None)
    return first.device if first is not None else next(model.parameters()).device


def _point_nll(model: torch.nn.Module, base: Mapping[str, Tensor], direction: Mapping[str, Tensor],
               alpha: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """NLL sum of one batch at base + alpha * direction (alpha: 0-d tensor, batched under vmap)."""
    p = dict(base)
    for n, t in direction.items():
        p[n] = base[n] + alpha.to(base[n].dtype) * t
    return batch_nll_sum(model, batch, p)


_compiled_point_nll = None  # compiled once per process; dynamo caches per model / shapes behind guards


def _compiled() -> Callable[..., Tensor]:
    global _compiled_point_nll
    if _compiled_point_nll is None:
        _compiled_point_nll = torch.compile(_point_nll, dynamic=False)
    return _compiled_point_nll


def losses_along_directions(model: torch.nn.Module, params0: Mapping[str, Tensor],
                            directions: Sequence[Mapping[str, Tensor]], alphas: Sequence[float] | Tensor,
                            batches: Iterable[Batch], *, method: str = "auto",
                            chunk_size: int | None = 4) -> Tensor:
    """losses[i, j] = L(theta0 + alphas[j] * directions[i]) on the token set (fp64, shape [D, G]).

    params0: the saved tensors, by the names of model.named_parameters() (a subset is fine: the model's
    other parameters keep their current values). A direction may name a subset of params0 (the rest is
    not moved). Nothing is mutated: not params0, not the directions, not the model's parameters.
    L is the token-weighted mean NLL (loss.py); the model runs in eval mode. Methods:
      'vmap'     up to `chunk_size` points of one direction per batched call (None: all of them; peak
                 memory ~ chunk_size x (parameters + activations of one batch));
      'loop'     one functional call per point;
      'compiled' 'loop' through torch.compile (fuses the elementwise work; the first call per model and
                 token shape compiles, ~1 min on 2 CPU cores, so it pays off over thousands of points);
      'auto'     'vmap' on CUDA, 'loop' on CPU. Measured on a 2-core CPU (benchmarks/bench_landscape.py)
                 the forward is GEMM-bound and vmap's batched kernels were no faster than one point at a
                 time, while costing chunk_size parameter copies.
    """
    if method not in ENGINE_METHODS:
        raise LensError(f"landscape engine method {method!r} is not one of {ENGINE_METHODS}")
    _check_inputs(params0, directions)
    device = _device(params0, model)
    if method == "auto":
        method = "vmap" if device.type == "cuda" else "loop"
    prepared = prepare_batches(batches, device)
    n_tok = token_count(prepared)
    a_all = torch.as_tensor(alphas, dtype=torch.float64).flatten()  # [G]
    out = torch.empty(len(directions), a_all.numel(), dtype=torch.float64)
    base = {n: t.detach() for n, t in params0.items()}
    point = _compiled() if method == "compiled" else _point_nll

    def loss_at(alpha: Tensor, d: Mapping[str, Tensor]) -> Tensor:
        return sum(point(model, base, d, alpha, b).double() for b in prepared) / n_tok

    with torch.no_grad(), eval_mode(model), warnings.catch_warnings():
        # vmap has no batching rule for some fused CPU attention kernels and loops inside them; correct.
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        zero = a_all == 0
        if bool(zero.any()):  # theta0 itself, the same point for every direction: evaluate it once
            out[:, zero] = float(mean_nll(model, prepared, base))
        nz = (~zero).nonzero().flatten()  # [G'] indices of the points that move
        a = a_all[nz].to(device)  # fp64; each point casts alpha to the parameter dtype, like a Python float
        for i, d in enumerate(directions):
            d = {n: t.detach() for n, t in d.items()}
            if method == "vmap" and a.numel():
                vals = vmap(lambda x, d=d: loss_at(x, d), chunk_size=chunk_size)(a)
            else:
                vals = torch.stack([loss_at(x, d) for x in a]) if a.numel() else a
            out[i, nz] = vals.cpu().double()
    return out


def losses_along_directions_reference(model: torch.nn.Module, params0: Mapping[str, Tensor],
                                      directions: Sequence[Mapping[str, Tensor]],
                                      alphas: Sequence[float] | Tensor, batches: Iterable[Batch]) -> Tensor:
    """The study's engine, kept as the oracle: for each point, write p0 + alpha d into the live
    parameters in place, evaluate, then restore the model when done. One point at a time.

    params0 is copied first because it may alias the live parameters (e.g. dict(model.named_parameters()))
    and an in-place write would otherwise destroy it. Same loss and output as `losses_along_directions`.
    """
    _check_inputs(params0, directions)
    live = dict(model.named_parameters())
    missing = set(params0) - set(live)
    if missing:
        raise LensError(f"params0 names parameters the model does not have: {sorted(missing)[:5]}")
    prepared = prepare_batches(batches, _device(params0, model))
    a_all = [float(x) for x in torch.as_tensor(alphas, dtype=torch.float64).flatten()]
    base = {n: t.detach().clone() for n, t in params0.items()}
    backup = {n: live[n].detach().clone() for n in params0}
    out = torch.empty(len(directions), len(a_all), dtype=torch.float64)
    try:
        with torch.no_grad(), eval_mode(model):
            for i, d in enumerate(directions):
                for j, a in enumerate(a_all):
                    for n, p in base.items():
                        live[n].copy_(p + a * d[n] if n in d else p)
                    out[i, j] = mean_nll(model, prepared).item()
    finally:
        with torch.no_grad():
            for n, t in backup.items():
                live[n].copy_(t)
    return out
