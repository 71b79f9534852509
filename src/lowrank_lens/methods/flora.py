"""Flora: full-rank weights trained by Adafactor whose momentum of the target matrices lives in a rank-r random
projection, re-drawn every κ updates with the momentum carried over (arXiv 2402.03293, BorealisAI/flora-opt).

The optimizer is `optim/flora_adafactor.py` (update rule in its docstring). As the official package, Flora is
Adafactor on *every* parameter (factored second moment for matrices, parameter-scaled step size, update
clipping); only the momentum of the target linears is compressed, the rest (embeddings, LM head, norms) keeps a
full-size momentum, which the official eligibility rule (aspect ratio <= 4, "rule out embeddings") also gives.
That rule applies to the targets too: one with an aspect ratio above 4 (or min(m, n) < r) keeps a full-size
momentum, as in the official code, and the footprint counts it so.
The model is untouched, so the dense view of a target is its weight.

Not offered: Flora's compression of gradient *accumulation* (`FloraAccelerator`: each micro-batch gradient
down-projected into a buffer, decompressed before the update). It needs a hook between micro-batch backward
passes and before the gradient norm, which the method seam does not have; the loop accumulates full gradients.
The paper never trained LLaMA on C4, so the per-scale values are inferred (the preset notes say from where).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.flora_adafactor import FloraAdafactor
from . import register
from .base import MethodPreset
from .ranks import RankedConfig, RankedMethod, auto_rank
from .shapes import Footprint, model_modules, model_parameters, target_matrices
from .surgery import split_target_weights


@dataclass
class FloraConfig(RankedConfig):
    rank: int = 128
    """r (`tau` in the official configs): rows (m < n) or columns of the compressed momentum of an m x n target;
    0 = model.hidden_size // 4 (the 60m ratio), resolved from the final shape."""
    kappa: int = 1000
    """κ: the random projection is re-drawn (and the momentum transferred) every κ updates."""
    decay_rate: float = 0.8
    """c: Adafactor's second-moment decay ρ_t = 1 - t^-c (the official `decay_rate` -0.8, optax `b2` 0.8); it
    takes the role of optim.beta2."""
    eps: float = 1e-30
    """Added to G² before the second moment (Adafactor's eps1); it takes the role of optim.eps."""
    eps_scale: float = 1e-3
    """Floor of RMS(W) in the parameter-scaled step size (Adafactor's eps2)."""
    clip_threshold: float = 1.0
    """d: the update U is divided by max(1, RMS(U) / d) (Adafactor's update clipping)."""
    scale_parameter: bool = True
    """True: step size lr · max(eps_scale, RMS(W)) (Adafactor's relative step); False: lr."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kappa < 1:
            raise LensError(f"method.kappa must be >= 1 (updates between projection re-draws), got {self.kappa}")
        if not 0 < self.decay_rate <= 1:
            raise LensError(f"method.decay_rate must be in (0, 1] (rho_t = 1 - t^-c; 0.8 is Adafactor's), got "
                            f"{self.decay_rate}")
        if self.eps <= 0 or self.eps_scale < 0:
            raise LensError(f"method.eps must be > 0 and method.eps_scale >= 0, got {self.eps} and {self.eps_scale}")
        if self.clip_threshold <= 0:
            raise LensError(f"method.clip_threshold must be positive (1.0 is Adafactor's), got {self.clip_threshold}")


# rank: GaLore Table 2's ranks, as our other projected methods (inferred); lr: see _INFERRED.
_RANKS = {"60m": 128, "130m": 256, "350m": 256, "1b": 512}
_OFFICIAL = {"kappa": 1000, "decay_rate": 0.8, "eps": 1e-30, "eps_scale": 1e-3, "clip_threshold": 1.0,
             "scale_parameter": True}
_INFERRED = ("inferred: Flora never trained LLaMA on C4. kappa 1000, beta1 0.9, decay 0.8, update clipping 1, "
             "eps (1e-30, 1e-3) and the parameter-scaled step are the official optimizer's defaults and its T5 "
             "runs (replicate.sh, examples/flax/configs/optimizer/flora.yaml); r follows GaLore's Table 2 "
             "(Flora's configs use tau 128 and 256); lr 1e-2 is Adafactor's relative-step cap (the official "
             "_get_lr, T5's pre-training rate) on top of the recipe's warmup and cosine; no gradient clipping "
             "(Adafactor clips the update)")
# CPU runs (20 to 150 updates): κ 10 re-draws the projection and transfers the momentum several times, and
# lr 5e-2 (a step of lr·RMS(W) = 1e-3 at the 0.02 init, as AdamW's) makes the loss fall within 30 updates.
_CPU_KAPPA, _CPU_LR = 10, 5e-2


@register
class Flora(RankedMethod):
    """Full-rank weights; Adafactor with the targets' momentum in a rank-r random projection re-drawn every κ."""

    name = "flora"
    description = ("Full-rank weights; Adafactor whose momentum of the target matrices is kept in a rank-r random "
                   "projection, re-drawn every kappa updates with the momentum carried over")
    colour = "#aec7e8"
    Config = FloraConfig
    # Adafactor has no beta2 and its own eps (added to G², not to the denominator).
    unused_fields = {"optim.beta2": "method.decay_rate", "optim.eps": "method.eps"}
    memory_formula = ("P trainable, full-size gradients; fp32 state whatever the weights' dtype: per m x n matrix "
                      "row and column second moments (m + n), per vector a full one; momentum full-size for the "
                      "non-targets, r·max(m, n) per m x n target (full-size where min(m, n) < r or the aspect ratio "
                      "exceeds 4); a 0-dim RMS per tensor. The step counters and seeds are python ints.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"lr": 1e-2, "weight_decay": 0.0, "grad_clip": 0.0, "beta1": 0.9}
        if scale in _RANKS:
            params = {"rank": _RANKS[scale], **_OFFICIAL}
            return MethodPreset(params=params, optim=optim, notes=[
                f"Flora {scale}: rank {_RANKS[scale]}, method.kappa 1000, lr 1e-2, wd 0, no clipping, eps 1e-30, "
                "method.eps_scale 0.001, method.decay_rate 0.8, method.clip_threshold 1 (see below)", _INFERRED])
        params = {"rank": 0, **_OFFICIAL, "kappa": _CPU_KAPPA}
        return MethodPreset(params=params, optim={**optim, "lr": _CPU_LR}, notes=[
            f"Flora {scale}: rank = hidden/4 (the 60m ratio 128/512), method.kappa {_CPU_KAPPA}, lr {_CPU_LR:g}, wd 0, "
            f"no clipping, eps 1e-30, method.decay_rate 0.8; kappa is {_CPU_KAPPA}, not 1000, so the few hundred "
            f"updates re-draw the projection several times; lr {_CPU_LR:g}, not 1e-2, because the step is relative: "
            "lr·RMS(W) is 1e-3 per update at the N(0, 0.02²) init, AdamW's step, where 1e-2 moves a weight too "
            "little for a CPU run of 20 to 150 updates", _INFERRED])

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """Plain group then projected group, all fp32 (module docstring of optim/flora_adafactor.py)."""
        targets = target_matrices(run.model, run.method_cfg.targets, linear_only=False)
        momentum = run.optim.beta1 > 0
        r = auto_rank(run.method_cfg.rank, run.model)
        plain: dict[str, int] = {"exp_avg": 0, "exp_avg_sq_row": 0, "exp_avg_sq_col": 0, "exp_avg_sq": 0, "RMS": 0}
        for name, (kind, shape) in model_modules(run.model).items():
            if kind == "other" or name in targets:
                continue
            plain["exp_avg"] += math.prod(shape) if momentum else 0
            if len(shape) == 2:
                plain["exp_avg_sq_row"] += shape[0]
                plain["exp_avg_sq_col"] += shape[1]
            else:
                plain["exp_avg_sq"] += shape[0]
            plain["RMS"] += 1
        # The official eligibility (FloraAdafactor.compressed): a target with min(m, n) < r or an aspect ratio
        # above 4 keeps a full-size momentum (e.g. gate/up at micro with --set model.hidden_size=64).
        compressed = [min(m, n) >= r and max(m, n) <= 4 * min(m, n) for m, n in targets.values()]
        moments = [r * max(m, n) if low else m * n for (m, n), low in zip(targets.values(), compressed, strict=True)]
        projected = {"exp_avg": sum(moments) if momentum else 0,
                     "exp_avg_sq_row": sum(m for m, _ in targets.values()),
                     "exp_avg_sq_col": sum(n for _, n in targets.values()), "RMS": len(targets)}
        state = (plain, projected)
        return Footprint(trainable=tuple(model_parameters(run.model).values()), state=state,
                         state_bytes=4 * sum(v for g in state for v in g.values()), replicated_state=(1,))

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        cfg: FloraConfig = self.cfg
        targets, plain = split_target_weights(model, cfg.targets)
        groups = [{"params": plain},
                  {"params": list(targets.values()), "rank": auto_rank(cfg.rank, self.run.model), "kappa": cfg.kappa}]
        return FloraAdafactor(groups, lr=optim.lr, betas=(optim.beta1, cfg.decay_rate), eps=cfg.eps,
                              eps_scale=cfg.eps_scale, clip_threshold=cfg.clip_threshold,
                              scale_parameter=cfg.scale_parameter, weight_decay=optim.weight_decay,
                              seed=self.run.train.seed)
