"""The two-factor layer the factorised methods share: A (r x in) and B (out x r) in place of a bias-free
nn.Linear (in -> out), stored in torch layout (out x in of each map) so F.linear applies them directly.
low_rank.py multiplies them (y = B A x, a dense view W = B A); cola.py puts SiLU between (y = B silu(A x),
no dense view); loro.py trains low_rank's layer with its own optimizer. `FactoredMethod` is what the two
plugins that swap their targets for such a layer share (the swap, its seeds, the footprint). Not a plugin: it
registers nothing."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..config import RunConfig
from .ranks import RankedMethod, auto_rank
from .schedule import stable_seed
from .shapes import Footprint, adamw_footprint, factored_parameters
from .surgery import replace_linears


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


class FactoredMethod(RankedMethod):
    """A method whose targets become its `Layer` (A and B trained from scratch, no full-rank weight)."""

    Layer: ClassVar[type[FactoredLinear]] = FactoredLinear
    linear_targets_only = True

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """The targets' weights are gone; A and B of each target and every other parameter train with AdamW."""
        return adamw_footprint(run, factored_parameters(run, auto_rank(run.method_cfg.rank, run.model))[1])

    def factorize(self, model: nn.Module) -> list[str]:
        """Every target Linear replaced by a `Layer` of the run's rank, initialised from a seed of the run's seed,
        the method and the layer's name (so a layer's init does not depend on the others); the names replaced."""
        rank = auto_rank(self.cfg.rank, self.run.model)

        def wrap(name: str, mod: nn.Linear) -> FactoredLinear:
            new = self.Layer(mod.in_features, mod.out_features, rank, name, device=mod.weight.device,
                             dtype=mod.weight.dtype)
            new.reset_parameters(stable_seed(self.run.train.seed, self.name, name))
            return new

        return replace_linears(model, self.cfg.targets, self.name, wrap)
