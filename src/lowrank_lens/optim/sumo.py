"""SUMOAdamW: SUMO on the target matrices, torch AdamW on everything else, as one optimizer (docs/methods.md §21).

SUMO (Refael, Smorodinsky, Tirer & Lindenbaum, "Subspace-Aware Moment-Orthogonalization", NeurIPS 2025,
arXiv 2505.24749). No official code was found (the paper's github.com/guy120494/SUMO has no snapshot here and no
copy of it was located), so the update is re-derived from the paper's Algorithm 1 and §3.2. Per matrix W
(m x n, torch layout out x in) with gradient G, r' = min(r, m, n), t = updates done before this one:

1. Block 1, every K = `update_proj_gap` updates (t = 0, K, 2K, ...): Q = the top-r' singular vectors of G
   (the exact truncated SVD, Algorithm 1's stated alternative to a randomized one) on the paper's side: for
   m >= n the left ones, Q = U[:, :r'] (m x r'), Ĝ = QᵀG (r' x n); for m < n the right ones, Q = Vᵀ[:r']
   (r' x n), Ĝ = GQᵀ (m x r') ("the projection matrix would multiply the gradient from the right-hand
   side"). This is the opposite side from GaLore's code (which projects the smaller dimension), so the moment
   has r'·min(m, n) entries and Q r'·max(m, n), the paper's "nr + mr" of Table 1. The basis comes from
   GaLore's projector functions (optim/projector.py: fp32 SVD, the same fallbacks).
2. Block 1.1, at a refresh after the first: the moment is carried into the new subspace, M ← Q_newᵀQ_old·M
   (left) or M·Q_oldQ_newᵀ (right): the coordinates in the new basis of the projection of the old subspace's
   moment. At t = 0, M = 0.
3. Block 2: M ← μM + Ĝ (μ = `momentum`, no dampening: Algorithm 1's rule); O = UVᵀ from the thin SVD
   M = UΣVᵀ (in fp32, or fp64 for fp64 weights), so O is exactly orthogonal: OOᵀ = I (left) or OᵀO = I
   (right), and ‖O‖_F = √r'. Where M is all zero, O = 0 (the polar factor of 0 is undefined; the SVD would
   return an arbitrary orthogonal matrix), without a host sync.
4. Block 3, the optional norm-growth limiter (O ← O·γ‖O_prev‖/‖O‖ when ‖O‖/‖O_prev‖ > γ), is not
   implemented: with O from an exact SVD, ‖O‖_F = √r' at every update, so the ratio is 1 < γ = 1.1 and it
   never acts (it can only act on Newton-Schulz output, the paper's ablation).
5. Block 4: W ← W - η(G - Q(Ĝ - s·O)) - ηλW, i.e. W ← (1 - ηλ)W - η(s·QO + G_⊥) with G_⊥ = G - QĜ, the
   gradient outside the subspace, at the plain lr (`perp_grad`; False drops it and steps along s·QO only),
   and s = α·√max(m, n): α = `scale` (the paper's "projection back scale", GaLore's α) times the paper's
   shape factor "scaling updates by √max(m, n)" (after Moonshot's Muon, without its 0.2), which gives s·QO
   an RMS of α·√(r'/min(m, n)), the RMS of GaLore's α-scaled back-projected Adam step. The paper does not say
   whether the shape factor also multiplies G_⊥; here it does not (G_⊥ is a raw gradient, not a unit-norm
   direction). λ is optim.weight_decay, decoupled, on the pre-update W with the undecorated lr.

With r' = min(m, n) and m = n, Q is square and orthogonal: G_⊥ = 0, the transport is the change of basis,
QO = polar(Q·M), and SUMO is exactly-orthogonalised momentum SGD, B ← μB + G, W ← (1 - ηλ)W - η·s·UVᵀ(B)
(tests/methods/test_sumo.py). For m ≠ n at r' = min(m, n) the paper's side keeps a tall Q, so between refreshes
G_⊥ ≠ 0 and the two differ.

Sharded parameters (FSDP2): the projection needs the whole gradient, so each rank gathers one matrix's
gradient, steps its moment and basis (small, kept whole on every rank: `replicated_state`, as GaLore's) exactly
as one process does, and applies the rows of W it holds.

State per matrix: `step` (python int), `basis` (Q) and `moment` (M), both in the weight's dtype. AdamW groups:
torch AdamW's state (optim/aux_adamw.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..sharding import full, local, local_part
from .aux_adamw import AuxAdamW
from .projector import needs_refresh, orthogonal_basis, project, project_back


def paper_side_right(shape: torch.Size | tuple[int, ...]) -> bool:
    """True when Q multiplies from the right (m < n), Algorithm 1's side; False: from the left (m >= n)."""
    m, n = shape
    return m < n


def orthogonalize(matrix: torch.Tensor) -> torch.Tensor:
    """UVᵀ of the thin SVD UΣVᵀ of `matrix` (fp32, or fp64 for fp64 input), in `matrix`'s dtype; 0 for an
    all-zero matrix."""
    exact = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    u, _, vh = torch.linalg.svd(exact, full_matrices=False)
    return (u @ vh).mul_((matrix != 0).any()).to(matrix.dtype)


def transport(moment: torch.Tensor, old: torch.Tensor, new: torch.Tensor, right: bool) -> torch.Tensor:
    """Block 1.1: the moment's coordinates in the new basis, Q_newᵀQ_old·M (left) or M·Q_oldQ_newᵀ (right)."""
    return moment @ (old @ new.t()) if right else (new.t() @ old) @ moment


class SUMOAdamW(AuxAdamW):
    """SUMO on the groups with `matrix: True`, torch AdamW on the others (module docstring)."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, rank: int = 128, update_proj_gap: int = 200,
                 scale: float = 0.25, momentum: float = 0.9, perp_grad: bool = True) -> None:
        if rank < 1 or update_proj_gap < 1:
            raise ValueError(f"rank and update_proj_gap must be >= 1, got {rank} and {update_proj_gap}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "rank": rank,
                                  "update_proj_gap": update_proj_gap, "scale": scale, "momentum": momentum,
                                  "perp_grad": perp_grad})

    @staticmethod
    def replicated_state(group: dict[str, Any]) -> bool:
        """The SUMO groups keep their moment and basis whole on every rank under FSDP2 (module docstring)."""
        return bool(group["matrix"])

    def _matrix_update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        grad = full(p.grad)  # G: m x n, gathered when sharded
        right = paper_side_right(grad.shape)
        if "step" not in state:
            state["step"] = 0
        if needs_refresh(state["step"], group["update_proj_gap"], "basis" in state):  # Block 1
            old = state.get("basis")
            new = orthogonal_basis(grad, group["rank"], right, old)
            if old is not None:  # Block 1.1
                state["moment"] = transport(state["moment"], old, new, right)
            state["basis"] = new
        basis = state["basis"]
        low = project(grad, basis, right)  # Ĝ
        if "moment" not in state:
            state["moment"] = torch.zeros_like(low)
        state["step"] += 1
        moment = state["moment"].mul_(group["momentum"]).add_(low)  # Block 2
        ortho = orthogonalize(moment)
        s = group["scale"] * math.sqrt(max(grad.shape))
        if group["perp_grad"]:  # Block 4: G - Q(Ĝ - s·O)
            direction = grad - project_back(torch.sub(low, ortho, alpha=s), basis, right)
        else:
            direction = project_back(ortho, basis, right).mul_(s)
        lr = group["lr"]
        target = local(p)
        target.mul_(1 - lr * group["weight_decay"])
        target.add_(local_part(direction, p), alpha=-lr)
