"""DionAdamW: Dion on the target matrices, torch AdamW on everything else, as one optimizer (docs/methods.md §20).

Dion (Ahn, Xu, Abreu & Langford, arXiv 2504.05295; microsoft/dion `dion/dion.py`) orthonormalises a rank-r
approximation of the momentum instead of the whole matrix. Per matrix W (m x n) with gradient G, momentum M
(W's shape, zero at the start) and Q (min(m, n) x r', r' = min(r, m, n), N(0, 1) at the start), one update:

1. M ← M + G;
2. B = M, or Mᵀ when m < n, so that B (m' x n') has m' >= n'; one power-iteration step P = B·Q;
3. P ← orthonormal columns spanning P: Householder QR when m' <= r', else randomized Cholesky QR (a Gaussian
   sketch S of k x m', k = 1.25·r' rounded up to a multiple of 128, entries N(0, 1/k): R₁ from QR(S·P),
   P ← P·R₁⁻¹, then one Cholesky QR step P ← P·R₂⁻¹ with R₂ᵀR₂ = PᵀP), in fp32;
4. R = Bᵀ·P; where M is all zero, P = 0 and R = Q (the official guard, without a host sync);
5. error feedback M ← M - (1-μ)·P·Rᵀ (transposed back when m < n), so what the low-rank update leaves out stays
   in the momentum;
6. Q ← R with each column divided by (its norm + eps), in fp32;
7. W ← (1 - lr·wd)·W - lr·√(m/n)·P·Qᵀ (again transposed back when m < n): the spectral-norm scale of the
   official code, so the lr transfers across widths.

The official code wraps the hyperparameters in fp32 0-dim tensors for torch.compile, so its coefficients
(1-μ, 1-lr·wd, lr·√(m/n)) are computed in fp32, and it scales the low-rank product and the weight in separate
operations; this module does the same, and with the same Q and sketches it matches the official step bitwise
on CPU in fp32 and bf16 (tests/methods/test_dion.py restates the official single-device step).

Randomness: the official code draws Q and the sketches from torch's global generator. Here each draw has its
own generator, seeded by a hash of (seed, index) for Q and of (seed, index, t) for the sketch of update t,
`index` being the matrix's position in the optimizer: the same numbers on every DDP rank and after a resume.
Q is drawn on the CPU (the same on every device type); the sketch on the matrix's device (it changes only the
rounding: any sketch gives the same span, and the sign of each column of P cancels in P·Rᵀ and P·Qᵀ).

Sharded parameters (FSDP2): every step needs the whole matrix (B·Q sums over all rows), so each rank gathers
the gradient of one matrix, steps the whole momentum and Q, which it keeps whole (`replicated_state`, as
GaLore's projected state), exactly as one process does, and applies the rows of the update it holds. The
official code's sharded algebra (all-reducing the low-rank P and R instead of gathering) is not implemented.

State per matrix: `momentum` (W's shape), `Q` (min(m, n) x r'), both in W's dtype, and `step` (a python int).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import torch

from ..sharding import full, local, local_part
from .aux_adamw import AuxAdamW

OVERSAMPLE = 1.25
"""Rows of the randomized QR's sketch per column of P (the official `rcqr_oversample`)."""


def draw_seed(*parts: int) -> int:
    """The 63-bit seed of one draw: a hash of who draws and when (seed, index[, update]), not of any RNG state."""
    return int.from_bytes(hashlib.sha256(repr(("dion", *parts)).encode()).digest()[:8], "little") >> 1


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def initial_q(shape: tuple[int, int], seed: int, like: torch.Tensor) -> torch.Tensor:
    """Q at the first update: N(0, 1) entries drawn on the CPU from `seed`, in `like`'s dtype and device."""
    if like.device.type == "meta":
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    q = torch.randn(shape, generator=_generator(seed, torch.device("cpu")), dtype=like.dtype)
    return q.to(like.device)


def sketch(rows: int, cols: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    """S (k x rows) of step 3 for a P with `cols` columns: k = 1.25·cols rounded up to 128, N(0, 1/k) entries."""
    k = math.ceil(OVERSAMPLE * cols / 128.0) * 128
    out = torch.empty((k, rows), dtype=like.dtype, device=like.device)
    return out if like.device.type == "meta" else out.normal_(std=math.sqrt(1.0 / k), generator=_generator(
        seed, like.device))


def orthonormal_columns(p: torch.Tensor, seed: int) -> torch.Tensor:
    """Step 3: an m' x r' matrix with orthonormal columns spanning those of `p`, in `p`'s dtype."""
    if p.size(0) <= p.size(1):
        q, _ = torch.linalg.qr(p.float())
        return q.to(p.dtype).contiguous()
    s = sketch(p.size(0), p.size(1), seed, p)
    _, r1 = torch.linalg.qr((s @ p).float(), mode="r")
    q = torch.linalg.solve_triangular(r1, p.float(), upper=True, left=False)
    r2, _ = torch.linalg.cholesky_ex(q.T @ q, upper=True)
    q = torch.linalg.solve_triangular(r2, q, upper=True, left=False)
    return q.to(p.dtype).contiguous()


def _f32(value: float) -> torch.Tensor:
    """A hyperparameter as the official code passes it: an fp32 0-dim tensor."""
    return torch.tensor(value, dtype=torch.float32)


class DionAdamW(AuxAdamW):
    """Dion on the groups with `matrix: True` (their `rank` r), torch AdamW on the others (module docstring)."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.0, mu: float = 0.95, rank: int = 128, seed: int = 0
                 ) -> None:
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"mu must lie in [0, 1), got {mu}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "mu": mu,
                                  "rank": rank, "seed": seed})

    @staticmethod
    def replicated_state(group: dict[str, Any]) -> bool:
        """The Dion groups keep their momentum and Q whole on every rank under FSDP2 (module docstring)."""
        return bool(group["matrix"])

    def _matrix_update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        grad = full(p.grad)  # m x n, gathered when sharded
        m, n = grad.shape
        flip = m < n
        if "momentum" not in state:
            state["step"] = 0
            state["momentum"] = torch.zeros_like(grad)
            state["Q"] = initial_q((min(m, n), min(group["rank"], m, n)), draw_seed(group["seed"], index), grad)
        state["step"] += 1
        M, Q = state["momentum"], state["Q"]
        lr, mu, wd = _f32(group["lr"]), _f32(group["mu"]), _f32(group["weight_decay"])

        M.add_(grad)
        B = M.T.contiguous() if flip else M  # m' x n', m' >= n' (a copy when transposed, as the official batch)
        q = Q.to(B.dtype)
        P = orthonormal_columns(B @ q, draw_seed(group["seed"], index, state["step"]))
        R = B.T @ P
        empty = (B == 0).all()
        P = P.nan_to_num() * ~empty
        R = R.nan_to_num() * ~empty + q * empty

        M.add_((R @ P.T if flip else P @ R.T).mul(-(1 - mu)))  # error feedback
        r32 = R.float()
        Q_new = (r32 / (r32.square().sum(dim=0, keepdim=True).sqrt() + group["eps"])).to(R.dtype)

        scaled_lr = ((p.shape[0] / p.shape[1]) ** 0.5) * lr
        update = (Q_new @ P.T if flip else P @ Q_new.T).mul(-scaled_lr)
        target = local(p)
        target.mul_(1 - lr * wd)
        target.add_(local_part(update, p))
        Q.copy_(Q_new.to(Q.dtype))
