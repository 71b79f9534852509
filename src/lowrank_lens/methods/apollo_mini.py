"""APOLLO-Mini: APOLLO with a rank-1 random projection and one tensor-wise scaling factor per matrix, times √scale
(the paper's α = √128; Zhu et al., MLSys 2025, arXiv 2412.05270 §4.3). SGD-like memory: per target matrix the
state is two 1 x max(m, n) moments, a 1 x min(m, n) projection and a 0-dim limiter norm.

Everything but the defaults is APOLLO's (methods/apollo.py, optim/apollo_adamw.py). The official scripts differ per
scale in `scale` (128, but 192 at 130m) and `scale_front` (on at 60m and 130m, where the README recommends it for
short warmups; off at 350m and 1b).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import register
from .apollo import CPU_PROJ_GAP, OFFICIAL_SCRIPTS, SEED_NOTE, Apollo, ApolloConfig
from .base import MethodPreset
from .galore import REFERENCE_SCALES

# (scale, scale_front) of the official llama_<scale>_apollo_mini.sh scripts.
_SCRIPT_SCALE = {"60m": (128.0, True), "130m": (192.0, True), "350m": (128.0, False), "1b": (128.0, False)}


@dataclass
class ApolloMiniConfig(ApolloConfig):
    """APOLLO's fields with APOLLO-Mini's defaults (rank 1, tensor-wise, scale 128: the README's defaults)."""

    rank: int = 1
    scale: float = 128.0
    scale_type: str = "tensor"


@register
class ApolloMini(Apollo):
    """APOLLO with rank 1 and tensor-wise scaling: SGD-like optimizer memory."""

    name = "apollo-mini"
    description = ("Full-rank weights; each target gradient is rescaled by one AdamW/gradient norm ratio taken in a "
                   "rank-1 random projection, times √scale, with a norm-growth limiter (SGD-like memory)")
    colour = "#b39ddb"
    Config = ApolloMiniConfig
    memory_formula = ("as APOLLO with r = 1: per m x n target two 1 x max(m, n) moments, a 1 x min(m, n) "
                      "projection and a 0-dim limiter norm.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"lr": 1e-2, "weight_decay": 0.0}
        base = {"rank": 1, "update_proj_gap": 200, "scale_type": "tensor", "limiter": True, "gamma": 1.01,
                "eps": 1e-6, "projection_seed": "run"}
        if scale in REFERENCE_SCALES:
            value, front = _SCRIPT_SCALE[scale]
            where = "before" if front else "after"
            notes = [f"APOLLO-Mini {scale}: rank 1, lr 1e-2, T 200, wd 0, Adam eps 1e-6, tensor-wise scaling, "
                     f"method.scale {value:g} (the update times √{value:g}), method.scale_front {front}: the limiter "
                     f"γ 1.01 comes {where} the scale, no clipping ({OFFICIAL_SCRIPTS}/llama_{scale}_apollo_mini.sh: "
                     f"--rank 1 --lr 0.01 --update_proj_gap 200 --apollo_scale {value:g} --scale_type tensor "
                     f"--proj random{' --scale_front' if front else ''} --weight_decay 0; eps, betas and the limiter "
                     "are its AdamW's defaults; the schedule, 10% warmup and steps are the shared recipe's)", SEED_NOTE]
            if scale == "130m":
                notes.append("130m: the official script uses scale 192 (its comment: 1/4 of the model dimension 768), "
                             "not the README's default 128")
            return MethodPreset(params={**base, "scale": value, "scale_front": front}, optim=optim, notes=notes)
        notes = [f"APOLLO-Mini {scale}: rank 1, T {CPU_PROJ_GAP}, lr 1e-2, wd 0, Adam eps 1e-6, tensor-wise scaling, "
                 "method.scale 128, method.scale_front True; the README's default scale, scale_front as at 60m/130m "
                 f"(the README recommends it for short warmups), T {CPU_PROJ_GAP} so the few updates redraw the "
                 "projection several times", SEED_NOTE]
        return MethodPreset(params={**base, "update_proj_gap": CPU_PROJ_GAP, "scale": 128.0, "scale_front": True},
                            optim=optim, notes=notes)
