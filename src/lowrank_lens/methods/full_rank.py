"""Full-rank AdamW: the baseline every low-rank method is compared with (all defaults of Method)."""

from __future__ import annotations

from . import register
from .base import Method, MethodPreset


@register
class FullRank(Method):
    """Full-rank AdamW on every parameter (the baseline)."""

    name = "full-rank"
    description = "Full-rank AdamW on every parameter: the baseline the low-rank methods are compared with"
    colour = "#1f77b4"
    is_baseline = True
    memory_formula = "P = E + L(4h² + 3hi) trainable; state 2P moments + one `step` per tensor."

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        if scale in ("60m", "130m", "350m", "1b"):
            return MethodPreset(optim={"lr": 1e-3},
                                notes=[f"full-rank {scale}: lr 1e-3 as in the study's scripts (docs/study.md §1.4); "
                                       "the GaLore paper's tuned baseline lr was never released"])
        return MethodPreset()
