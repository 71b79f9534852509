"""MuonAdamW: Muon on the hidden matrices, torch AdamW on everything else, as one optimizer (docs/methods.md §19).

Muon (K. Jordan et al. 2024, KellerJordan/Muon) for a matrix W (m x n) with gradient G and momentum buffer B
(W's shape, zero at the start), μ = `momentum`, one update:

1. B ← B + (1-μ)(G - B)  (an EMA of the gradients, torch's `lerp_`);
2. D = G + μ(B - G) with Nesterov momentum (`nesterov`), else D = B;
3. O = NS(D): `ns_steps` quintic Newton-Schulz iterations towards the orthogonal polar factor of D, in bf16:
   X = D / max(‖D‖_F, eps), transposed so that X is wide; then X ← aX + (bA + cA²)X with A = XXᵀ and
   (a, b, c) = (3.4445, -4.7750, 2.0315), coefficients that maximise the slope at zero (the singular values of
   the result lie near 0.7 to 1.2 rather than at 1);
4. W ← (1 - lr·wd)W (decoupled weight decay with the group's lr), then W ← W - lr·s(m, n)·O with the shape
   scale `adjust_lr`: "original" s = √max(1, m/n) (Keller Jordan's muon.py) or "match_rms_adamw"
   s = 0.2·√max(m, n) (Moonshot's, so that the update's RMS is AdamW's and AdamW's lr and weight decay carry
   over).

This is torch.optim.Muon's update (torch 2.13, `adjust_lr_fn` as above, `eps` = the group's eps) operation for
operation, so the two agree bitwise (tests/methods/test_muon.py), with one difference: torch's iteration casts
D with `.bfloat16()`, which is D itself for bf16 parameters and then normalises it in place; without Nesterov
that D is the momentum buffer, so torch rescales the buffer at every step. Here the cast is always a copy.

Sharded parameters (FSDP2): the momentum is elementwise and stays sharded with its parameter; the direction D
is gathered whole (one matrix at a time), orthogonalised exactly as one process does, and each rank applies
the rows it holds (as GaLoreAdamW, optim/galore_adamw.py).

State per matrix: `momentum_buffer` (the parameter's shape and dtype). AdamW groups: torch AdamW's state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..sharding import full, local, local_part
from .aux_adamw import AuxAdamW

QUINTIC = (3.4445, -4.7750, 2.0315)
"""(a, b, c) of the Newton-Schulz quintic p(x) = ax + bx³ + cx⁵ (KellerJordan/Muon, torch.optim.Muon)."""
ADJUST_LR = ("original", "match_rms_adamw")


def shape_scale(adjust_lr: str, shape: torch.Size | tuple[int, ...]) -> float:
    """s(m, n), the factor of the lr for an m x n matrix (module docstring, step 4)."""
    m, n = shape[0], shape[1]
    if adjust_lr == "original":
        return math.sqrt(max(1, m / n))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(m, n))
    raise ValueError(f"adjust_lr must be one of {ADJUST_LR}, got {adjust_lr!r}")


def newton_schulz(matrix: torch.Tensor, steps: int, eps: float, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """NS(D) of step 3 in `dtype` (bf16 as the reference; the tests also run it in fp64), the shape of `matrix`
    (a new tensor; `matrix` is not changed)."""
    a, b, c = QUINTIC
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.to(dtype, copy=True)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # bA + cA²
        x = torch.addmm(x, poly, x, beta=a)  # aX + (bA + cA²)X
    return x.T if tall else x


class MuonAdamW(AuxAdamW):
    """Muon on the groups with `matrix: True`, torch AdamW on the others (module docstring)."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, adjust_lr: str = "match_rms_adamw") -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        shape_scale(adjust_lr, (1, 1))  # validates the name
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                                  "adjust_lr": adjust_lr})

    @staticmethod
    def replicated_state(group: dict[str, Any]) -> bool:
        """No state is replicated under FSDP2: the momentum is sharded like its parameter."""
        return False

    def _matrix_update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        grad = p.grad
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        buf, mu = state["momentum_buffer"], group["momentum"]
        buf.lerp_(grad, 1 - mu)
        direction = grad.lerp(buf, mu) if group["nesterov"] else buf
        ortho = newton_schulz(full(direction), group["ns_steps"], group["eps"])  # whole matrix, every rank
        lr = group["lr"]
        target = local(p)
        target.mul_(1 - lr * group["weight_decay"])
        target.add_(local_part(ortho, p), alpha=-(lr * shape_scale(group["adjust_lr"], p.shape)))
