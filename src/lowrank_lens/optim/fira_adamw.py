"""FiraAdamW: GaLore plus a scaled full-rank residual and a norm-growth limiter (docs/methods.md §3.2).

Steps 1-3 are GaLoreAdamW's (same projector, SVD schedule, projected Adam with eps 1e-6, no moment reset).
With R the projected gradient and N = M / (√V + eps) the *bias-uncorrected* normalised update, the
official code (`optimizer_torch/fira_adamw.py`, PyPI `fira` 1.0.2) then does, per projected weight:

4. residual S = G - α · project_back(R)   (`residual="code"`: only α·P·R is subtracted, §3.2 (a));
5. norm-based scaling φ = ‖N‖ / (‖R‖ + 1e-8) along norm_dim, one factor per index of the non-reduced
   dimension: per row of an m x r R (right projector), per column of an r x n R (left); S ← φ ⊙ S;
6. limiter (γ = 1.01): the first step only records s_prev = ‖S‖; later, limiter = max(‖S‖/(s_prev+1e-8), γ)/γ,
   S ← S / limiter and s_prev ← ‖S_before‖ / limiter, i.e. the previous *limited* norm;
7. W ← W - step_size · (α · project_back(N) + S), then decoupled weight decay.

`residual="paper"` follows the paper's Algorithm 1 (App. A.1) instead: S = G - P·R (the true out-of-
subspace part) and α multiplies both terms, W ← W - step_size · α · (project_back(N) + S). Both modes fold
the bias correction into step_size; the paper's bias-corrected N differs from that only in where eps
sits (eps vs eps·√(1-β2^t)), as for every transformers-style AdamW. The published numbers come from
the code, hence the default (§3.2, §8 item 8).

Extra state per projected weight: `residual_norm` (0-dim tensor, s_prev).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .galore_adamw import GaLoreAdamW
from .limiter import check_gamma, limit_norm_growth
from .projector import is_right

RESIDUAL_MODES = ("code", "paper")
# Hard-coded in the official code (§3.2 step 5; the limiter's own is in limiter.py).
_PHI_EPS = 1e-8


class FiraAdamW(GaLoreAdamW):
    """GaLoreAdamW whose projected weights also get Fira's scaled, norm-limited residual (docs/methods.md §3.2).

    Projected groups use the `scale` key for Fira's α (`--alpha` in the reference scripts); an `alpha`
    key, as written by the reference's `divide_params`, is accepted as a synonym.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 gamma: float = 1.01, residual: str = "code") -> None:
        self._fira_defaults = {"gamma": gamma, "residual": residual}  # read by _extra_defaults below
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _extra_defaults(self) -> dict[str, Any]:
        return dict(self._fira_defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "rank" in param_group and "alpha" in param_group:
            param_group = dict(param_group)
            param_group.setdefault("scale", param_group.pop("alpha"))
        super().add_param_group(param_group)
        group = self.param_groups[-1]  # torch has filled in gamma and residual by now
        if group["residual"] not in RESIDUAL_MODES:
            raise ValueError(f"residual {group['residual']!r} is not one of {', '.join(RESIDUAL_MODES)}")
        check_gamma(group["gamma"])

    def _direction(self, state: dict[str, Any], grad: torch.Tensor, low: torch.Tensor,
                   norm_low: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """α·P·N + S (code) or α·(P·N + S) (paper); G, the result: m x n; R, N: m x r or r x n."""
        alpha = group["scale"]
        back_low = self._back(state, low, grad)  # P·R: the in-subspace part of G, m x n
        code = group["residual"] == "code"
        if code:
            back_low.mul_(alpha)  # the reference's project_back applies α, so only α·P·R is removed
        residual = grad - back_low  # S: m x n
        residual.mul_(self._phi(grad, low, norm_low))
        residual = limit_norm_growth(state, residual, group["gamma"], "residual_norm")  # the limiter, on S
        direction = self._back(state, norm_low, grad)  # P·N, m x n
        if code:
            return direction.mul_(alpha).add_(residual)
        return direction.add_(residual).mul_(alpha)

    @staticmethod
    def _phi(grad: torch.Tensor, low: torch.Tensor, norm_low: torch.Tensor) -> torch.Tensor:
        """Norm-based scaling ‖N‖/(‖R‖+1e-8) along the rank dimension: m x 1 (right) or 1 x n (left)."""
        # Right: R is m x r, reduce over r (dim 1) -> one factor per row. Left: R is r x n, reduce over r
        # (dim 0) -> one per column. The reference picks the dim from N's shape; for 'std' it is the same.
        dim = 1 if is_right(grad.shape) else 0
        phi = torch.linalg.vector_norm(norm_low, dim=dim, keepdim=True)
        return phi.div_(torch.linalg.vector_norm(low, dim=dim, keepdim=True).add_(_PHI_EPS))
