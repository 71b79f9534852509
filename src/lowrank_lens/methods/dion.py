"""Dion: full-rank weights; the target matrices are updated by an orthonormalised rank-r approximation of their
momentum (one power-iteration step with QR, error feedback), AdamW trains the embeddings, the LM head and the
norms (Ahn, Xu, Abreu & Langford, arXiv 2504.05295; docs/methods.md §20).

The optimizer is `optim/dion.py`: the official `dion/dion.py` single-device step (microsoft/dion @ 0a059a4, not
on PyPI) and torch.optim.AdamW in one optimizer. As in the official `train.py`, the block matrices are Dion's and
the embedding and LM head AdamW's (betas (0.95, 0.98), the same lr); LLaMA's norms, which the official GPT does
not have, go with them. The model is untouched, so the dense view is the weight itself.

`method.rank` is r as for GaLore (0: hidden/4, from the final shape); the official code takes a fraction of
min(m, n), which is the hidden size for every LLaMA target, so r = hidden/4 is its `rank_fraction` 0.25 (the
`train.py` default). Each matrix uses r' = min(r, m, n).

Official recipe value not taken by default, as a switch: the official train.py gives the embedding and LM head
weight decay 0 while the Dion matrices decay; `method.adamw_no_decay=True` does that for all AdamW parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.dion import DionAdamW
from . import register
from .base import MethodPreset
from .ranks import RankedConfig, RankedMethod, auto_rank
from .shapes import Footprint, adamw_state, model_parameters, param_bytes, target_matrices
from .surgery import split_target_weights

_OFFICIAL = "microsoft/dion @ 0a059a4"


@dataclass
class DionConfig(RankedConfig):
    rank: int = 0
    """r: columns of P and Q per matrix (r' = min(r, m, n)); 0 = model.hidden_size // 4, the official train.py's
    rank_fraction 0.25, resolved from the final shape."""
    mu: float = 0.95
    """μ: the error feedback keeps M - (1-μ)·P·Rᵀ (the official default)."""
    adamw_no_decay: bool = False
    """True: the AdamW groups get weight decay 0 (the official train.py's embedding and LM head); False: every
    group decays with optim.weight_decay."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.mu < 1:
            raise LensError(f"method.mu must be in [0, 1), got {self.mu}")


@register
class Dion(RankedMethod):
    """Full-rank weights; Dion (orthonormalised rank-r momentum, error feedback) on the targets, AdamW elsewhere."""

    name = "dion"
    description = ("Full-rank weights; the target matrices follow Dion (a rank-r power-iteration approximation of "
                   "the momentum, orthonormalised, with error feedback), embeddings, LM head and norms follow AdamW")
    colour = "#6b6ecf"
    Config = DionConfig
    memory_formula = ("P trainable, full-size gradients; state per m x n target a full momentum (m·n) and Q "
                      "(min(m, n)·r'), L(4h² + 3hi) + 7L·h·r' for the LLaMA targets, and AdamW's 2E moments + one "
                      "`step` per other tensor; the Dion step counters are python ints.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"lr": 0.02, "beta1": 0.95, "beta2": 0.98, "eps": 1e-8, "weight_decay": 0.01}
        return MethodPreset(params={"rank": 0, "mu": 0.95, "adamw_no_decay": False}, optim=optim, notes=[
            f"Dion {scale}: rank = hidden/4, lr 0.02, wd 0.01, eps 1e-8, method.mu 0.95, AdamW betas (0.95, 0.98) "
            f"({_OFFICIAL}: configs/dion_160m.yaml lr, mu and wd, train.py's rank_fraction 0.25 and AdamW betas, "
            "Dion's epsilon; the spectral lr scale √(m/n) is meant to carry the lr across widths)",
            "no C4 LLaMA numbers exist for Dion: the recipe is the official 160M GPT one on FineWeb; its train.py "
            "gives the embedding and LM head weight decay 0 (--set method.adamw_no_decay=True to match)"])

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """Dion group (the targets): momentum and Q per matrix; AdamW group: torch AdamW's state."""
        targets = target_matrices(run.model, run.method_cfg.targets, linear_only=False)
        plain = tuple(model_parameters(run.model, exclude=tuple(targets)).values())
        r, size = auto_rank(run.method_cfg.rank, run.model), param_bytes(run)
        momentum = sum(m * n for m, n in targets.values())
        q = sum(min(m, n) * min(r, m, n) for m, n in targets.values())
        adam, adam_bytes = adamw_state(plain, size)
        return Footprint(trainable=tuple(model_parameters(run.model).values()),
                         state=({"momentum": momentum, "Q": q}, adam),
                         state_bytes=size * (momentum + q) + adam_bytes, replicated_state=(0,))

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        cfg: DionConfig = self.cfg
        targets, plain = split_target_weights(model, cfg.targets)
        aux = {"params": plain, **({"weight_decay": 0.0} if cfg.adamw_no_decay else {})}
        return DionAdamW([{"params": list(targets.values()), "matrix": True}, aux], lr=optim.lr,
                         betas=(optim.beta1, optim.beta2), eps=optim.eps, weight_decay=optim.weight_decay,
                         mu=cfg.mu, rank=auto_rank(cfg.rank, self.run.model), seed=self.run.train.seed)
