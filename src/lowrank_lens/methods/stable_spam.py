"""Stable-SPAM: full-rank Adam on stabilised gradients (arXiv 2502.17055), SPAM's successor.

The optimizer is `optim/stable_spam_adamw.py` (update rule and the official code's quirks in its docstring),
restated from `galore_torch/stablespam.py` of TianjinYellow/StableSPAM at 6a66da1. Per parameter tensor, spikes
above a moving max of |g| are scaled down to it (AdaClip), the whole gradient is rescaled to a moving average of
its norm (AdaGN), Adam's moments are reset every ΔT updates, and β1 and γ1 decay by a cosine over the run. As in
the official `utils/setup.py`, every trainable parameter is in one group under the same algorithm (the
`targets` only name the dense view's layers); the model is untouched, so its dense view is the weight.

One quirk of the official code is a switch, off by default (the intended behaviour):

- `official_reset`: upstream zeroes the moments after the update that resets them (that update still runs on
  the old moments with a restarted count). True reproduces it; by default the reset update is Adam's first.

Reproduced as upstream (the optimizer's docstring says how): the restarted count in the bias corrections of the
moving max and the norm averages, the cosine factor on β1 and γ1 (`decay_steps` = train.steps, as the README asks
of `total_T`), and those three averages in the parameters' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.stable_spam_adamw import StableSPAMAdamW
from . import register
from .base import BaseMethodConfig, Method, MethodPreset
from .shapes import Footprint, model_parameters, param_bytes

COMMIT = "TianjinYellow/StableSPAM at 6a66da1"


@dataclass
class StableSPAMConfig(BaseMethodConfig):
    gamma1: float = 0.85
    """γ1 (`--gamma1`): decay of the moving average of the gradient norm (AdaGN), times the cosine factor."""
    gamma2: float = 0.99999
    """γ2 (`--gamma2`): decay of the moving average of the squared gradient norm (AdaGN)."""
    gamma3: float = 0.999
    """γ3 (`--gamma3`, the paper's θ): decay of the moving max of |g| that sets the spike threshold (AdaClip)."""
    reset_interval: int = 1000
    """ΔT (`--update_proj_gap`): Adam's moments are reset at updates ΔT, 2ΔT, ...; 0 never resets."""
    decay_steps: int = 0
    """T_d (`--total_T`): length of the cosine that scales β1 and γ1; 0: train.steps (the README's advice)."""
    decay_floor: float = 0.5
    """η (`--eta`): the cosine factor's end value; 1 keeps β1 and γ1 constant."""
    official_reset: bool = False
    """True: zero the moments after the update that resets them, as the official code (module docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, role in (("gamma1", "decay of the gradient-norm average"), ("gamma2", "decay of the squared-norm "
                           "average"), ("gamma3", "decay of the moving max of |g|")):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise LensError(f"method.{name} must lie in [0, 1) ({role}), got {value}")
        if self.reset_interval < 0:
            raise LensError(f"method.reset_interval must be >= 0 (0 never resets), got {self.reset_interval}")
        if self.decay_steps < 0:
            raise LensError(f"method.decay_steps must be >= 0 (0 means train.steps), got {self.decay_steps}")
        if not 0.0 <= self.decay_floor <= 1.0:
            raise LensError(f"method.decay_floor must lie in [0, 1] (1 keeps beta1 constant), got {self.decay_floor}")


# lr per scale and where it comes from (TianjinYellow/StableSPAM at 6a66da1 unless said otherwise).
_REFERENCE = {
    "60m": (1e-3, "no Stable-SPAM script or log at 60m: SPAM's 60m lr (TianjinYellow/SPAM-Optimizer, its logged "
                  "10K-step run), since Stable-SPAM's published 130m and 350m lrs are SPAM's"),
    "130m": (8e-4, "scripts_BF16/stablespam.sh, the README's BF16 example and its logged 20K-step run "
                   "wandb/run-20250303_170026-aqdfevdk, final eval loss 3.10"),
    "350m": (4e-4, "FP4_scripts/350-stablespam-fp4.sh, INT4_scripts/350-stablespam-int4.sh and the README, 4-bit "
                   "runs of 20K steps; there is no BF16 350m script"),
    "1b": (2e-3, "no Stable-SPAM script or log at 1b: SPAM's 1b lr (scripts/1b.sh of TianjinYellow/SPAM-Optimizer)"),
}
# scripts_BF16/stablespam.sh (--gamma1 0.85 --gamma2 0.99999 --gamma3 0.999 --update_proj_gap 1000), argparse --eta.
_OFFICIAL = {"gamma1": 0.85, "gamma2": 0.99999, "gamma3": 0.999, "reset_interval": 1000, "decay_steps": 0,
             "decay_floor": 0.5, "official_reset": False}
# CPU runs (20 and 150 updates): ΔT about a third of the run (as SPAM's CPU presets), and γ3 = 1 - 1/ΔT, so the
# moving max remembers about one reset interval, as 0.999 does over the official ΔT 1000.
_CPU = {"nano": (8, 0.875), "micro": (50, 0.98)}


@register
class StableSPAM(Method):
    """Full-rank Adam on AdaClip- and AdaGN-stabilised gradients with a momentum reset every ΔT."""

    name = "stable-spam"
    description = ("Full-rank Adam on gradients spike-clipped to a moving max of |g| and rescaled to a moving average "
                   "of their norm per tensor, with a momentum reset every ΔT updates and β1 decayed by a cosine")
    colour = "#006d2c"
    Config = StableSPAMConfig
    memory_formula = ("P trainable, full-size gradients; state 2P moments and three 0-dim scalars per parameter tensor "
                      "(the moving max and the two gradient-norm averages), in the parameters' dtype; the counters "
                      "are python ints.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"eps": 1e-8, "weight_decay": 0.0, "grad_clip": 0.0}
        quirk = ("official quirk not reproduced by default: the update at a momentum reset runs on the old moments "
                 "and the zeroed ones start at the next update (method.official_reset=True reproduces it)")
        if scale in _CPU:
            interval, gamma3 = _CPU[scale]
            params = {**_OFFICIAL, "reset_interval": interval, "gamma3": gamma3}
            return MethodPreset(params=params, optim=optim, notes=[
                f"Stable-SPAM {scale}: the recipe's lr, eps 1e-8, wd 0, no clipping by the loop (optim.grad_clip 0), "
                f"method.gamma1 0.85, method.gamma2 0.99999, method.gamma3 {gamma3}, method.reset_interval {interval}, "
                "method.decay_floor 0.5, method.decay_steps = train.steps (the official BF16 values but ΔT about a "
                "third of the run and γ3 = 1 - 1/ΔT, so resets and spike clipping happen in a CPU run)", quirk])
        lr, source = _REFERENCE[scale]
        notes = [f"Stable-SPAM {scale}: lr {lr:g}, eps 1e-8, wd 0, no clipping by the loop (optim.grad_clip 0), "
                 "method.gamma1 0.85, method.gamma2 0.99999, method.gamma3 0.999, method.reset_interval 1000, "
                 f"method.decay_floor 0.5, method.decay_steps = train.steps (lr: {source}; the rest: "
                 "scripts_BF16/stablespam.sh, its --total_T and --eta argparse defaults, where --total_T equals the "
                 f"script's --num_training_steps, and the optimizer's eps; {COMMIT})",
                 "the 4-bit 350m scripts use --gamma1 0.7 --gamma2 0.9 --update_proj_gap 500; the presets train bf16 "
                 "and keep the BF16 script's values; the official runs are 20K steps with a 2000-update LR warmup",
                 quirk]
        return MethodPreset(params=dict(_OFFICIAL), optim={**optim, "lr": lr}, notes=notes)

    @classmethod
    def resolve(cls, run: RunConfig) -> dict[str, Any]:
        cfg: StableSPAMConfig = run.method_cfg
        return {**super().resolve(run), **({} if cfg.decay_steps else {"decay_steps": run.train.steps})}

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """One group: Adam's two moments and three 0-dim scalars per tensor, all in the parameters' dtype."""
        trainable = tuple(model_parameters(run.model).values())
        n, tensors = sum(trainable), len(trainable)
        state = {"exp_avg": n, "exp_avg_sq": n, "clip_max": tensors, "norm_avg": tensors, "norm_sq_avg": tensors}
        return Footprint(trainable=trainable, state=(state,), state_bytes=param_bytes(run) * (2 * n + 3 * tensors))

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        cfg: StableSPAMConfig = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        return StableSPAMAdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                               weight_decay=optim.weight_decay, gamma1=cfg.gamma1, gamma2=cfg.gamma2,
                               gamma3=cfg.gamma3, reset_interval=cfg.reset_interval,
                               decay_steps=cfg.decay_steps or self.run.train.steps, decay_floor=cfg.decay_floor,
                               official_reset=cfg.official_reset)
