"""Muon: full-rank weights; the target matrices' momentum is orthogonalised by Newton-Schulz before the update,
AdamW trains the embeddings, the LM head and the norms (K. Jordan et al. 2024; docs/methods.md §19).

The optimizer is `optim/muon.py` (torch.optim.Muon's update and torch.optim.AdamW in one optimizer, one state
dict, one lr schedule). As in the reference recipe (KellerJordan/Muon README: Muon for the hidden weights,
AdamW for "embeddings, classifier heads, and hidden gains/biases"), the target linears of the blocks are Muon's
and every other parameter AdamW's. The model is untouched, so the dense view is the weight itself.

The lr's shape scale is Moonshot's "match_rms_adamw" (0.2·√max(m, n)) by default: it makes the update's RMS
AdamW's, so the one optim.lr of the recipe (the GaLore protocol's AdamW lr, which the published Muon rows
followed) trains both parts. `method.adjust_lr=original` is Keller Jordan's √max(1, m/n), whose recipe pairs
Muon lr 0.02 with a separate AdamW lr 3e-4 (one lr here: set it for the part that matters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.muon import ADJUST_LR, MuonAdamW
from . import register
from .base import BaseMethodConfig, Method, MethodPreset
from .shapes import Footprint, adamw_state, model_parameters, param_bytes, target_matrices
from .surgery import split_target_weights

_KJ = "KellerJordan/Muon @ 857d1ad"


@dataclass
class MuonConfig(BaseMethodConfig):
    momentum: float = 0.95
    """μ: EMA factor of the momentum buffer B ← μB + (1-μ)G (KellerJordan/Muon's default, torch's)."""
    nesterov: bool = True
    """Orthogonalise G + μ(B - G) instead of B (the reference default)."""
    ns_steps: int = 5
    """Newton-Schulz iterations of the quintic (the reference default)."""
    adjust_lr: str = "match_rms_adamw"
    """Shape scale of the lr per m x n matrix: 'match_rms_adamw' 0.2·√max(m, n) (Moonshot; AdamW's lr carries
    over) or 'original' √max(1, m/n) (Keller Jordan's muon.py; its lr is Muon's own, 0.02 in the README)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.momentum < 1:
            raise LensError(f"method.momentum must be in [0, 1), got {self.momentum}")
        if self.ns_steps < 1:
            raise LensError(f"method.ns_steps must be >= 1 (the reference uses 5), got {self.ns_steps}")
        if self.adjust_lr not in ADJUST_LR:
            raise LensError(f"method.adjust_lr must be one of {', '.join(ADJUST_LR)}, got {self.adjust_lr!r}")


_OFFICIAL = {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "adjust_lr": "match_rms_adamw"}
_SETTINGS = ("method.momentum 0.95, method.nesterov True, method.ns_steps 5 (the KellerJordan/Muon defaults, "
             f"{_KJ}), method.adjust_lr match_rms_adamw")


@register
class Muon(Method):
    """Full-rank weights; Muon (orthogonalised momentum) on the target matrices, AdamW on everything else."""

    name = "muon"
    description = ("Full-rank weights; the target matrices follow Muon (momentum orthogonalised by a Newton-Schulz "
                   "iteration), embeddings, LM head and norms follow AdamW")
    colour = "#393b79"
    Config = MuonConfig
    memory_formula = ("P trainable, full-size gradients; state one momentum per target matrix, L(4h² + 3hi), and "
                      "AdamW's 2E moments + one `step` per other tensor.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        if scale in ("nano", "micro"):
            return MethodPreset(params=dict(_OFFICIAL), notes=[
                f"Muon {scale}: the recipe's lr and AdamW settings, {_SETTINGS} (so the recipe's AdamW lr serves "
                "both parts, as at the reference scales)"])
        return MethodPreset(params=dict(_OFFICIAL), optim={"lr": 1e-3, "weight_decay": 0.0}, notes=[
            f"Muon {scale}: lr 1e-3, wd 0, {_SETTINGS} (lr and wd: the GaLore protocol's AdamW values, which the "
            "published Muon rows followed, arXiv 2506.16659; match_rms_adamw: Moonshot, arXiv 2502.16982, so "
            "that one AdamW lr serves Muon)",
            f"{_KJ} README instead pairs Muon lr 0.02 (adjust_lr original) with AdamW lr 3e-4, betas (0.9, 0.95) "
            "and wd 0.01; one optim.lr here trains both parts"])

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """Muon group (the targets): one momentum buffer each; AdamW group: torch AdamW's state."""
        targets = target_matrices(run.model, run.method_cfg.targets, linear_only=False)
        plain = tuple(model_parameters(run.model, exclude=tuple(targets)).values())
        size = param_bytes(run)
        momentum = sum(m * n for m, n in targets.values())
        adam, adam_bytes = adamw_state(plain, size)
        return Footprint(trainable=tuple(model_parameters(run.model).values()),
                         state=({"momentum_buffer": momentum}, adam), state_bytes=size * momentum + adam_bytes)

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        cfg: MuonConfig = self.cfg
        targets, plain = split_target_weights(model, cfg.targets)
        return MuonAdamW([{"params": list(targets.values()), "matrix": True}, {"params": plain}], lr=optim.lr,
                         betas=(optim.beta1, optim.beta2), eps=optim.eps, weight_decay=optim.weight_decay,
                         momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.ns_steps,
                         adjust_lr=cfg.adjust_lr)
