"""GoLore: GaLore whose subspace refreshes switch from SVD to random bases late in training (arXiv 2410.11289).

He et al. (ICML 2025) show that GaLore's SVD subspace of a small-batch gradient can be noise-dominated near a
stationary point, so GaLore need not converge, and that a random projection (uniform on the Stiefel manifold)
converges at ordinary batch sizes. Their recipe, "GoLore@x%", runs GaLore for the first (100 - x)% of the
iterations and GoLore for the last x%. Here `rand_ratio` is that switch point as a fraction of train.steps (the
official `rand_epoch = rand_ratio x num_training_steps`): refreshes at per-parameter steps >= it draw random
bases. Everything else (parameters, projector side, α, T, eps, memory) is GaLore's (methods/galore.py); the
optimizer is `optim/golore_adamw.py`, which also documents the `reproject` switch for the first moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import LensError
from ..optim.golore_adamw import REPROJECT_MODES, GoLoreAdamW
from . import register
from .base import MethodPreset
from .galore import GaLore, GaLoreConfig, shared_preset

# The paper's pre-training runs and the repository's only pre-training script (script/Go_pt.sh) are LLaMA-60M.
_SCRIPT_60M = {"rank": 128, "update_proj_gap": 200, "scale": 1.0, "rand_ratio": 0.8}
_SCRIPT_NOTE = ("GoLore 60m: rank 128, T 200, lr 1e-3, α 1, clip 1, wd 0, Adam eps 1e-6, random projections "
                "from 80% of train.steps (pkumelon/Golore script/Go_pt.sh: --rank 128 --update_proj_gap 200 --lr 0.001 "
                "--rand_ratio 0.8 --optimizer golore_adamw; α and clip are torchrun_main.py's argparse defaults "
                "--scale 1.0 and --clip_grad_norm 1.0; eps is its AdamW's default)")
_EXTRA_STEPS_NOTE = ("the script's --num_extra_training_steps 5000 (5000 more updates at the final lr after the "
                     "10000 of the cosine, all random-projection ones) is not reproduced: the switch is a fraction "
                     "of train.steps, as the paper's GoLore@20% states it")
# CPU runs are 20 (nano) to 150 (micro) updates with T = 10: switching at half the run leaves several random
# refreshes (nano: step 10; micro: 80 ... 140), where 0.8 would leave nano none.
_CPU_RATIO = 0.5


@dataclass
class GoLoreConfig(GaLoreConfig):
    rand_ratio: float = 0.8
    """Refreshes at per-parameter steps >= rand_ratio x train.steps draw a random basis (official
    `--rand_ratio`; 0.8 is GoLore@20%); 1 keeps GaLore's SVD throughout, 0 is pure GoLore."""
    reproject: str = "random"
    """First moment at a refresh: 'random' (re-projected into the new basis at random refreshes; GaLore
    before the switch), 'every' (at every refresh), 'code' (the official AdamW's transient copy), 'none'."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.rand_ratio <= 1.0:
            raise LensError(f"method.rand_ratio must be in [0, 1] (the fraction of train.steps after which "
                            f"refreshes are random; 1 = never), got {self.rand_ratio}")
        if self.reproject not in REPROJECT_MODES:
            raise LensError(f"method.reproject {self.reproject!r} is not one of {', '.join(REPROJECT_MODES)}")


@register
class GoLore(GaLore):
    """GaLore that switches to random (Stiefel-uniform) projections after rand_ratio of the run."""

    name = "golore"
    description = ("GaLore whose subspace refreshes switch from the gradient's SVD to random Stiefel-uniform bases "
                   "after rand_ratio of the run (GoLore@x%), which converges with small batches")
    colour = "#bcbd22"
    Config = GoLoreConfig
    memory_formula = "as GaLore: the random basis has the SVD basis's shape and replaces it."

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        if scale == "60m":
            return MethodPreset(params={**_SCRIPT_60M, "reproject": "random"},
                                optim={"lr": 1e-3, "weight_decay": 0.0, "grad_clip": 1.0},
                                notes=[_SCRIPT_NOTE, _EXTRA_STEPS_NOTE, _reproject_note()])
        galore = shared_preset(scale, alpha_1b=0.25, method="GaLore")  # GaLore's values at this scale
        if scale in ("130m", "350m", "1b"):
            p = galore.params
            notes = [f"GoLore {scale}: rank {p['rank']}, lr 1e-2, α 0.25, T 200, wd 0, Adam eps 1e-6, random "
                     "projections from 80% of train.steps (method.rand_ratio 0.8)",
                     "inferred: GoLore's paper and code pre-train only LLaMA-60M, so rank, lr, α and T are our "
                     "GaLore preset at this scale (docs/study.md §1.4; 1b: GaLore Table 2's rank 512) and the "
                     "switch point is GoLore@20% as in the 60m script", _reproject_note()]
            return MethodPreset(params={**p, "rand_ratio": 0.8, "reproject": "random"}, optim=galore.optim,
                                notes=notes)
        notes = [f"GoLore {scale}: rank = hidden/4 (the 60m ratio 128/512), T 10, lr 1e-2, α 0.25, wd 0, Adam eps "
                 f"1e-6, random projections from {_CPU_RATIO:.0%} of train.steps; our GaLore CPU preset "
                 "(T 10, not 200, so the few updates refresh often) with the switch at half the run, so that "
                 "several refreshes are random", _reproject_note()]
        return MethodPreset(params={**galore.params, "rand_ratio": _CPU_RATIO, "reproject": "random"},
                            optim=galore.optim, notes=notes)

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        plain, projected = self.param_groups(model)
        projected.update(self.switch_keys())
        return GoLoreAdamW([plain, projected], reproject=self.cfg.reproject, **self.optimizer_kwargs(optim))

    def switch_keys(self) -> dict[str, Any]:
        """The projected group's GoLore keys: the switch step (as the official float rand_ratio x steps,
        compared with the per-parameter step) and the seed of the random draws."""
        # Rounded so that float fuzz (0.8 x 15 = 12.000000000000002) cannot postpone the switch by a whole T.
        return {"random_from": round(self.cfg.rand_ratio * self.run.train.steps, 9), "seed": self.run.train.seed}


def _reproject_note() -> str:
    return ("method.reproject 'random': the first moment is re-projected into each random basis (the official "
            "MSGD optimizer's rule) and kept as GaLore keeps it across SVD refreshes, so the run is GaLore "
            "until the switch; 'code' is the official golore_adamw's transient re-projection at every refresh, "
            "'every' the README's ReLoRA-style path")
