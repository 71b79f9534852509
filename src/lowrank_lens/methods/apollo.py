"""APOLLO: full-rank weights, AdamW's element-wise step size coarsened to channel-wise scaling factors estimated
from AdamW moments in a random rank-r subspace (Zhu et al., MLSys 2025, arXiv 2412.05270).

The update of a target matrix is its full gradient with each channel rescaled by ‖N‖/‖R‖, where R is the
gradient under a seeded Gaussian projection (redrawn every T steps, no SVD) and N the Adam update of R; times
√scale, through Fira's norm-growth limiter. The optimizer and the update rule are `optim/apollo_adamw.py`; the
selection of parameters (the 7 attention/MLP linears per block; everything else plain AdamW at the same lr) and
the refresh schedule are GaLore's (methods/galore.py), as in the official `main_pretrain.py`. APOLLO-Mini
(rank 1, tensor-wise scaling) is methods/apollo_mini.py.

Official quirk kept as a switch: `projection_seed="official"` seeds each parameter's projections with its
1-based index in the optimizer and draws them on the gradient's device (so CUDA and CPU runs differ and
train.seed changes nothing); the default "run" draws on the CPU from stable_seed(train.seed, layer name), the
same numbers on every device and rank (docs/design.md convention 7). Both then advance the seed chain the
official way at every redraw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.apollo_adamw import SCALE_TYPES, ApolloAdamW
from . import register
from .base import MethodPreset
from .galore import REFERENCE_SCALES, GaLore, GaLoreConfig, check_gamma
from .ranks import auto_rank
from .schedule import stable_seed
from .shapes import Footprint, model_parameters, param_bytes, target_matrices
from .surgery import split_target_weights

PROJECTION_SEEDS = ("run", "official")
OFFICIAL_SCRIPTS = "zhuhanqing/APOLLO scripts/pretrain_c4"
# Ranks of the official scripts (llama_<scale>_apollo.sh): hidden/4 up to 350m ("use exact 1/4 of llama 130M
# model dimension"), but 256 = hidden/8 at 1b (the README: "256 for APOLLO works well for 1B and 7B").
_RANKS = {"60m": 128, "130m": 192, "350m": 256, "1b": 256}
# As GaLore's CPU presets: T = 10 redraws the projection several times in the 20 (nano) to 150 (micro) updates.
CPU_PROJ_GAP = 10


@dataclass
class ApolloConfig(GaLoreConfig):
    """GaLore's fields and checks (methods/galore.py) with APOLLO's defaults, and APOLLO's own."""

    rank: int = 0
    """r: rows (right projection, out >= in) or columns (left, out < in) of the Gaussian projection, the rank
    of the moments; 0 = model.hidden_size // 4 (the official "1/4 of the original dim"), from the final shape."""
    update_proj_gap: int = 200
    """T: the projection is redrawn at per-parameter steps 0, T, 2T, ... (official --update_proj_gap)."""
    scale: float = 1.0
    """The official --apollo_scale: the update is multiplied by √scale (the paper's α = √scale)."""
    eps: float = 1e-6
    """Adam eps for all groups (the official AdamW's transformers-style default); optim.eps is not used."""
    scale_type: str = "channel"
    """'channel': one factor per channel (APOLLO); 'tensor': one per matrix (APOLLO-Mini)."""
    scale_front: bool = False
    """Multiply by √scale before the norm-growth limiter instead of after it (official --scale_front)."""
    limiter: bool = True
    """Fira's norm-growth limiter on the update (the official code's default; its disable_nl switches it off)."""
    gamma: float = 1.01
    """Limiter: the update norm may grow by at most this factor per step (hard-coded 1.01 upstream)."""
    projection_seed: str = "run"
    """'run': projections from stable_seed(train.seed, layer name), drawn on the CPU (device-independent);
    'official': seeded by the parameter's 1-based optimizer index, drawn on the gradient's device."""
    scale_meaning: ClassVar[str] = " (the update is multiplied by √scale)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_type not in SCALE_TYPES:
            raise LensError(f"method.scale_type {self.scale_type!r} is not one of {', '.join(SCALE_TYPES)}")
        check_gamma(self.gamma)
        if self.projection_seed not in PROJECTION_SEEDS:
            raise LensError(f"method.projection_seed {self.projection_seed!r} is not one of "
                            f"{', '.join(PROJECTION_SEEDS)}")


@register
class Apollo(GaLore):
    """Full-rank weights; channel-wise gradient scaling from AdamW moments in a random rank-r subspace."""

    name = "apollo"
    description = ("Full-rank weights; each target gradient channel is rescaled by the AdamW/gradient norm ratio "
                   "of its rank-r random projection (redrawn every T steps), with a norm-growth limiter")
    colour = "#5d3a9b"
    Config = ApolloConfig
    memory_formula = ("P trainable, full-size gradients; state 2E moments for the non-targets and, per m x n target, "
                      "two moments of the projected gradient (2r·max(m, n)), the Gaussian projection (r·min(m, n)) "
                      "and a 0-dim limiter norm. Step counter and seed are python ints.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"lr": 1e-2, "weight_decay": 0.0}
        base = {"update_proj_gap": 200, "scale": 1.0, "scale_type": "channel", "scale_front": False,
                "limiter": True, "gamma": 1.01, "eps": 1e-6, "projection_seed": "run"}
        if scale in REFERENCE_SCALES:
            rank = _RANKS[scale]
            notes = [f"APOLLO {scale}: rank {rank}, lr 1e-2, T 200, wd 0, Adam eps 1e-6, channel-wise scaling, "
                     f"method.scale 1 (the update times √1), limiter γ 1.01 after the scale, no clipping "
                     f"({OFFICIAL_SCRIPTS}/llama_{scale}_apollo.sh: --rank {rank} --lr 0.01 --update_proj_gap 200 "
                     "--apollo_scale 1 --scale_type channel --proj random --weight_decay 0; eps, betas and the "
                     "limiter are its AdamW's defaults, --grad_clipping defaults to 0; the schedule, 10% warmup "
                     "and steps are the shared recipe's)", SEED_NOTE]
            if scale == "1b":
                notes.append("1b: the official script's rank 256 is hidden/8, not the 1/4 rule (512) of the smaller "
                             "scales and of GaLore; its README: 256 works well for 1B and 7B")
            return MethodPreset(params={"rank": rank, **base}, optim=optim, notes=notes)
        notes = [f"APOLLO {scale}: rank = hidden/4 (the official 1/4 rule), T {CPU_PROJ_GAP}, lr 1e-2, wd 0, Adam eps "
                 f"1e-6, channel-wise scaling, method.scale 1, limiter γ 1.01; T is {CPU_PROJ_GAP}, not the "
                 "scripts' 200, so the few updates redraw the projection several times", SEED_NOTE]
        return MethodPreset(params={**base, "rank": 0, "update_proj_gap": CPU_PROJ_GAP}, optim=optim, notes=notes)

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """Plain group: Adam moments of the non-targets. Projected group, per m x n target: moments
        r x max(m, n) each, projection r x min(m, n) and (with the limiter) a 0-dim norm, in the parameters'
        dtype; the rank is not clipped to min(m, n) (check_rank forbids a larger one)."""
        cfg = run.method_cfg
        targets = target_matrices(run.model, cfg.targets, linear_only=False)
        plain = sum(model_parameters(run.model, exclude=tuple(targets)).values())
        r = auto_rank(cfg.rank, run.model)
        low = sum(r * max(m, n) for m, n in targets.values())
        projected = {"exp_avg": low, "exp_avg_sq": low, "basis": sum(r * min(m, n) for m, n in targets.values())}
        if cfg.limiter:
            projected["update_norm"] = len(targets)
        state = ({"exp_avg": plain, "exp_avg_sq": plain}, projected)
        return Footprint(trainable=tuple(model_parameters(run.model).values()), state=state,
                         state_bytes=param_bytes(run) * sum(v for g in state for v in g.values()),
                         replicated_state=(1,))  # ApolloAdamW.replicated_state: the projected group

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        cfg: ApolloConfig = self.cfg
        plain, projected = self.param_groups(model)
        projected["scale_type"] = cfg.scale_type
        official = cfg.projection_seed == "official"
        if not official:
            projected["seeds"] = [stable_seed(self.run.train.seed, "random projection", name)
                                  for name in self.projected_names(model)]
        return ApolloAdamW([plain, projected], scale_front=cfg.scale_front, limiter=cfg.limiter, gamma=cfg.gamma,
                           seeding="official" if official else "stable", **self.optimizer_kwargs(optim))

    def projected_names(self, model: nn.Module) -> list[str]:
        """Module names of the projected weights, in the order GaLore.param_groups puts them in the group."""
        return list(split_target_weights(model, self.cfg.targets)[0])


SEED_NOTE = ("method.projection_seed 'run': projections from stable_seed(train.seed, layer name) drawn on the CPU, "
              "the same on every device and rank; 'official' is the official seeding (the parameter's optimizer "
              "index, drawn on the gradient's device, so CUDA runs draw other numbers and train.seed is ignored)")

