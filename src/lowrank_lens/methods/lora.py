"""LoRA pre-training: a frozen random W plus a trained low-rank update that is never merged (docs/methods.md §11).

    y = x W^T + (alpha/r) B A(dropout(x))      W frozen (out x in), A: r x in, B: out x r

The "LoRA" baseline of GaLore's Table 2: ReLoRA (methods/relora.py) without merges, re-inits, optimizer
pruning or the jagged schedule; the update stays confined to rank r for the whole run. W is the weight the
model holds at wrap time, i.e. the model's own N(0, 0.02^2) init (or a warm start's weights, `train.init_from`,
loaded before `prepare_model`); it is a frozen parameter, never in an optimizer group, so it stays bitwise
equal to that init. As in the ReLoRA code that GaLore's training script descends from (Guitaricet/relora,
peft_pretraining/relora.py and torchrun_main.py), only the target linears' W are frozen: the embedding, the LM
head and the norms train.

Init (docs/methods.md §11.2): A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)) from a CPU generator
seeded by (train.seed, layer name), B = 0, so at step 0 every layer, and the model, computes exactly what the
dense init computes. (ReLoRA's HEAD zeroes A as well when it keeps W, issue #18; without merges nothing would
ever re-draw A, so that init is not offered here.) The dense view W + (alpha/r) B A is formed in W's dtype with
the scale applied to the product, the order of the forward pass and of ReLoRA's merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import RunConfig
from ..errors import LensError
from . import register
from .base import MethodPreset
from .ranks import RankedConfig, RankedMethod, auto_alpha, auto_rank
from .relora import ReLoRALinear, frozen_base_footprint
from .schedule import stable_seed
from .shapes import Footprint
from .surgery import replace_linears


class LoRALinear(ReLoRALinear):
    """Frozen W plus (alpha/r) B A(dropout(x)): ReLoRA's layer (forward, init, dense view, sharding), of which
    LoRA never calls `merge`. A class of its own so that each plugin finds only its own layers."""


@dataclass
class LoRAConfig(RankedConfig):
    rank: int = 0
    """r; 0 = model.hidden_size // 4 (the 60m ratio), resolved from the final shape."""
    alpha: float = 32.0
    """The update is scaled by alpha / rank (`--lora_alpha`, default 32 in the ReLoRA code); 0 = rank / 4
    (scale 0.25, the 60m ratio 32 / 128), resolved from the final rank."""
    dropout: float = 0.1
    """Dropout on the LoRA branch's input (hard-coded 0.1 in the ReLoRA code); the frozen path is not dropped."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise LensError(f"method.alpha must be >= 0 (0 = rank / 4), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise LensError(f"method.dropout must be in [0, 1), got {self.dropout}")


# rank: GaLore Table 2 (docs/methods.md §2.4); lr: ReLoRA's preset at that scale (docs/methods.md §6.7), inferred.
_REFERENCE = {"60m": (128, 1e-3), "130m": (256, 1e-3), "350m": (256, 5e-4), "1b": (512, 4e-4)}
_INFERRED = ("inferred: alpha 32, dropout 0.1, clip 1 and wd 0 are the ReLoRA code's defaults (argparse and its "
             "hard-coded dropout), which GaLore's training script descends from; lr is our ReLoRA preset's at this "
             "scale (docs/methods.md §6.7), LoRA being ReLoRA without resets; GaLore's Table 2 LoRA learning rate "
             "was never published (GaLore issue #68) and its LoRA code is not public; the study (docs/study.md) "
             "did not train this method")


@register
class LoRA(RankedMethod):
    """Frozen random W plus a never-merged LoRA on every target; AdamW on the factors, embeddings, head, norms."""

    name = "lora"
    scaled_by_alpha = True  # method.alpha 0 = rank / 4
    description = ("Frozen random full-rank W plus a trained (alpha/r) B A on every target linear, never merged "
                   "(ReLoRA without resets, GaLore's LoRA baseline); AdamW, clip 1")
    colour = "#17becf"
    Config = LoRAConfig
    linear_targets_only = True
    memory_formula = ("E + L·r·(11h + 3i) trainable; the frozen W, L(4h² + 3hi), has no gradient and no state; "
                      "state 2 x trainable + `step`s, as ReLoRA.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        if scale not in _REFERENCE:
            return MethodPreset(params={"rank": 0, "alpha": 0.0, "dropout": 0.1}, optim={"grad_clip": 1.0},
                                notes=[f"LoRA {scale}: rank = hidden/4, alpha = rank/4 (scale 0.25: the 60m ratios), "
                                       "dropout 0.1, clip 1, wd 0, the recipe's lr, no warm start (ReLoRA's CPU "
                                       "settings without resets)"])
        rank, lr = _REFERENCE[scale]
        notes = [f"LoRA {scale}: r {rank}, alpha 32, dropout 0.1, lr {lr:g}, clip 1, wd 0, no warm start (r: GaLore "
                 f"Table 2, docs/methods.md §2.4; alpha/r = {32 / rank:g}; the rest inferred, see below)", _INFERRED]
        if scale == "350m":
            notes.append("the study's ReLoRA 350m runs were not clipped; LoRA keeps the ReLoRA code's default clip 1")
        if scale == "1b":
            notes.append("1b: r 512 as in GaLore's Table 2, lr 4e-4 as our ReLoRA 1b preset (inferred)")
        return MethodPreset(params={"rank": rank, "alpha": 32.0, "dropout": 0.1}, optim={"lr": lr, "grad_clip": 1.0},
                            notes=notes)

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        return frozen_base_footprint(run)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        cfg: LoRAConfig = self.cfg
        rank = auto_rank(cfg.rank, self.run.model)
        alpha = auto_alpha(cfg.alpha, rank)

        def wrap(name: str, mod: nn.Linear) -> LoRALinear:
            new = LoRALinear(mod, rank, alpha, cfg.dropout, name)
            new.reset_lora(stable_seed(self.run.train.seed, self.name, name))
            return new

        replace_linears(model, cfg.targets, self.name, wrap)
        return model

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """{layer name: W + (alpha/r) B A} (out x in): the matrix each layer applies in eval mode (no dropout)."""
        return {m.layer_name: m.dense_weight() for m in model.modules() if isinstance(m, LoRALinear)}
