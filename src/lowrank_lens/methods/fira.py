"""Fira: GaLore plus the norm-scaled full-rank residual and the norm-growth limiter (docs/methods.md §3).

Same parameter selection, projector and defaults as GaLore (§3.1, §3.3) except α 0.0625 at 1b; the
optimizer is `optim/fira_adamw.py`. `residual` picks the official code's update (default; the published
numbers come from it) or the paper's Algorithm 1 (§3.2, §8 item 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import LensError
from ..optim.fira_adamw import RESIDUAL_MODES, FiraAdamW
from . import register
from .base import MethodPreset
from .galore import GaLore, GaLoreConfig, check_gamma, shared_preset


@dataclass
class FiraConfig(GaLoreConfig):
    """`scale` is Fira's α (`--alpha` in its scripts)."""

    gamma: float = 1.01
    """Norm-growth limiter: ‖S‖ may grow by at most this factor per step (hard-coded 1.01 upstream)."""
    residual: str = "code"
    """'code': S = G - α·P·R, update α·P·N + φ⊙S (the official code, which produced the published numbers);
    'paper': S = G - P·R, update α·(P·N + φ⊙S) (the paper's Algorithm 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.residual not in RESIDUAL_MODES:
            raise LensError(f"method.residual {self.residual!r} is not one of {', '.join(RESIDUAL_MODES)}")
        check_gamma(self.gamma)


@register
class Fira(GaLore):
    """GaLore plus the norm-scaled full-rank residual and the norm-growth limiter."""

    name = "fira"
    description = ("GaLore plus the norm-scaled full-rank residual of the gradient outside the subspace and a "
                   "norm-growth limiter")
    colour = "#2ca02c"
    Config = FiraConfig
    memory_formula = "as GaLore, plus a 0-dim residual norm (the limiter's s_prev) per target."

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        preset = shared_preset(scale, alpha_1b=0.0625, method="Fira")
        preset.params.update(gamma=1.01, residual="code")
        preset.notes.append("Fira residual='code' (G - α·P·R, not scaled by α): the official code's rule "
                            "that produced the published numbers; the paper's Algorithm 1 is residual='paper'")
        return preset

    @classmethod
    def _extra_state(cls, n_targets: int) -> dict[str, int]:
        return {"residual_norm": n_targets}  # 0-dim: the limiter's previous (limited) residual norm

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        return FiraAdamW(self.param_groups(model), gamma=self.cfg.gamma, residual=self.cfg.residual,
                         **self.optimizer_kwargs(optim))
