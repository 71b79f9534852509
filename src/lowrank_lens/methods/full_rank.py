"""Full-rank AdamW: the baseline every low-rank method is compared with (all defaults of Method)."""

from __future__ import annotations

from . import register
from .base import Method, MethodPreset


@register
class FullRank(Method):
    """Full-rank AdamW on every parameter (the baseline)."""

    name = "full-rank"
    is_baseline = True

    @classmethod
    def preset(cls, scale: str, model_hidden: int) -> MethodPreset:
        if scale in ("60m", "130m", "350m", "1b"):
            return MethodPreset(optim={"lr": 1e-3},
                                notes=["full-rank lr 1e-3 as in the study's scripts (paper.md §1.4); the "
                                       "GaLore paper's tuned baseline lr was never released"])
        return MethodPreset()
