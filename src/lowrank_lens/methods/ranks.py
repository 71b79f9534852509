"""Methods with a rank: `method.rank` 0 resolves to hidden/4 from the final shape (and a LoRA-style alpha 0
to rank/4), and a rank is checked against the smallest target matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import ModelConfig, RunConfig
from ..errors import LensError
from .base import BaseMethodConfig, Method
from .shapes import target_matrices


@dataclass
class RankedConfig(BaseMethodConfig):
    rank: int = 0
    """r; 0 = model.hidden_size // 4 (the 60m ratio 128 / 512), resolved from the final shape."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 0:
            raise LensError(f"method.rank must be >= 0 (0 = hidden_size // 4), got {self.rank}")


class RankedMethod(Method):
    """A method with a `rank` option that factorises or projects the targets: method.rank 0 resolves to
    auto_rank, and the rank is checked against the smallest target (check_rank)."""

    scaled_by_alpha: ClassVar[bool] = False
    """True for the LoRA-style methods: their method.alpha 0 resolves to auto_alpha (alpha / r = 0.25)."""

    @classmethod
    def resolve(cls, run: RunConfig) -> dict[str, Any]:
        cfg = run.method_cfg
        rank = auto_rank(cfg.rank, run.model)
        values = {"rank": rank, **({"alpha": auto_alpha(cfg.alpha, rank)} if cls.scaled_by_alpha else {})}
        return {k: v for k, v in values.items() if not getattr(cfg, k)}

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        super().check_config(run)
        check_rank(run)


def check_rank(run: RunConfig) -> None:
    """method.rank (0: automatic, see auto_rank) factorising or projecting an out x in matrix is meaningful
    only up to min(out, in); above it the factors hold more parameters than the matrix (CoLA at r = 8 x
    hidden has 15x the weights). The bound is that of the smallest selected matrix."""
    auto = not run.method_cfg.rank
    rank = auto_rank(run.method_cfg.rank, run.model)
    matrices = target_matrices(run.model, run.method_cfg.targets, linear_only=False)
    name, (out, inn) = min(matrices.items(), key=lambda kv: min(kv[1]))
    bound = min(out, inn)
    if rank > bound:
        what = f"method.rank (automatic: hidden_size // 4 = {rank})" if auto else f"method.rank {rank}"
        raise LensError(f"{what} exceeds {bound} = min(out, in) of the smallest target matrix {name} "
                        f"({out} x {inn}); use method.rank <= {bound}")


def auto_rank(rank: int, model: ModelConfig) -> int:
    """method.rank, where 0 means hidden_size // 4 (the 60m ratio 128 / 512), from the final shape."""
    return rank or max(1, model.hidden_size // 4)


def auto_alpha(alpha: float, rank: int) -> float:
    """method.alpha, where 0 means rank / 4: the scale alpha / r = 0.25 of the 60m recipes (32 / 128)."""
    return alpha or rank / 4
