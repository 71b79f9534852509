"""The two-factor layer the factorised methods share: A (r x in) and B (out x r) in place of a bias-free
nn.Linear (in -> out), stored in torch layout (out x in of each map) so F.linear applies them directly.
low_rank.py multiplies them (y = B A x, a dense view W = B A); cola.py puts SiLU between (y = B silu(A x),
no dense view); loro.py trains low_rank's layer with its own optimizer. Not a plugin: it registers nothing."""

from __future__ import annotations

import torch
from torch import nn


class FactoredLinear(nn.Module):
    """A and B of one target; the subclass's forward says how they combine."""

    def __init__(self, in_features: int, out_features: int, rank: int, layer_name: str = "",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.layer_name = layer_name  # the module name at wrap time: stable seeds, factor and dense-view keys
        self.A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))  # r x in
        self.B = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))  # out x r

    def reset_parameters(self, seed: int) -> None:
        """A, B ~ N(0, sigma^2), sigma = r^(-1/4) (in+out)^(-1/4), so Var((B A)_ij) = 1/(in+out); drawn on
        the CPU from `seed`, so the init does not depend on the device."""
        if self.A.is_meta:  # counting parameters: nothing to draw
            return
        sigma = self.rank ** -0.25 * (self.in_features + self.out_features) ** -0.25
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.A.copy_(torch.randn(self.A.shape, generator=g) * sigma)
            self.B.copy_(torch.randn(self.B.shape, generator=g) * sigma)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.rank}"
