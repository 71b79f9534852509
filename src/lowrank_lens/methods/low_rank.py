"""Low-Rank: every target linear is a plain product of two trained factors (docs/methods.md §10).

    y = B (A x),   W = B A      A: r x in, B: out x r, no bias, nothing in between

The "Low-Rank" baseline of GaLore's Table 2 (Kamalakara et al. 2022): CoLA (methods/cola.py) without the SiLU
between the factors. The MLP's own SwiGLU activation is part of the model, not of the layer, and stays. Because
the layer is linear, a dense view exists and is exactly W = B A, of rank at most r.

Init (docs/methods.md §10.2): CoLA's balanced Gaussian, A, B ~ N(0, sigma^2) with sigma = r^(-1/4) (in+out)^(-1/4),
so an entry of B A has variance r sigma^4 = 1/(in+out); drawn on CPU from a generator seeded by (train.seed,
layer name), so the init does not depend on the device. With CoLA's init (and CoLA's optimizer settings in the
presets) the two methods differ only in the SiLU. Not chosen: the ReLoRA code's `lora_only` path (A Kaiming,
B = 0: every projection outputs exactly 0 at step 0), and spectral init (a truncated SVD of the dense init,
Khodak et al. 2021, examined by Kamalakara et al.), which costs an SVD of every target matrix at each
`prepare_model`, i.e. at every checkpoint load. The layer is a plain nn.Module (not an nn.Linear), so
transformers' `_init_weights` never overwrites the factors. The model's dense N(0, 0.02^2) weights of the
targets are discarded, as CoLA and SLTrain discard theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import MethodPreset
from .factored import FactoredLinear, FactoredMethod
from .ranks import RankedConfig


class LowRankLinear(FactoredLinear):
    """y = B (A x), i.e. the dense W = B A (out x in); replaces a bias-free nn.Linear (in -> out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        return F.linear(F.linear(x, self.A), self.B)  # [..., r] in between; r (in + out) MACs per token

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """W = B A (out x in), in the factors' dtype."""
        return self.B @ self.A


@dataclass
class LowRankConfig(RankedConfig):
    """The targets and the rank r (RankedConfig: 0 = model.hidden_size // 4, the 60m ratio 128 / 512)."""


# rank: GaLore Table 2's ranks for its low-rank baselines (docs/methods.md §2.4); lr: CoLA's official scripts at
# that scale (docs/methods.md §4.4), inferred, since GaLore never published its baseline learning rates.
_REFERENCE = {"60m": (128, 6e-3), "130m": (256, 3e-3), "350m": (256, 3e-3), "1b": (512, 2e-3)}
_OPTIM: dict[str, float] = {"weight_decay": 0.01, "grad_clip": 0.5}  # CoLA's (docs/methods.md §4.4), inferred
_INFERRED = ("inferred: lr, wd 0.01 on every parameter and clip 0.5 are CoLA's official settings at this scale "
             "(docs/methods.md §4.4), so Low-Rank and CoLA differ only in the SiLU; GaLore's Table 2 Low-Rank "
             "learning rate was never published (GaLore issue #68) and its code is not public; the study "
             "(docs/study.md) did not train this method")


@register
class LowRank(FactoredMethod):
    """Plain low-rank factorisation W = B A of every target, trained from scratch; AdamW on everything."""

    name = "low-rank"
    description = ("Every target linear becomes a rank-r product B A trained from scratch (CoLA without the "
                   "SiLU, GaLore's Low-Rank baseline); AdamW with wd 0.01 on all parameters, clip 0.5")
    colour = "#8c564b"
    Config = LowRankConfig
    Layer = LowRankLinear
    memory_formula = ("E + L·r·(11h + 3i) trainable (A: r x in, B: out x r per target; no full-rank W); "
                      "state 2 x that + `step`s, as CoLA.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        if scale not in _REFERENCE:
            return MethodPreset(params={"rank": 0}, optim=dict(_OPTIM),
                                notes=[f"Low-Rank {scale}: rank = hidden/4 (the 60m ratio 128/512), AdamW wd 0.01 "
                                       "on all parameters, clip 0.5, the recipe's lr (CoLA's CPU settings)"])
        rank, lr = _REFERENCE[scale]
        notes = [f"Low-Rank {scale}: r {rank}, lr {lr:g}, AdamW wd 0.01 on all parameters, clip 0.5 (r: GaLore "
                 "Table 2, docs/methods.md §2.4; the rest inferred, see below)", _INFERRED,
                 "init: CoLA's balanced Gaussian factors, product variance 1/(in+out) (docs/methods.md §10.2)"]
        if scale == "1b":
            notes.append("1b: r 512 as in GaLore's Table 2, lr as CoLA's 1B script (inferred)")
        return MethodPreset(params={"rank": rank}, optim={**_OPTIM, "lr": lr}, notes=notes)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self.factorize(model)
        return model

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """{layer name: B A} (out x in): the exact matrix each layer applies, of rank <= r."""
        return {m.layer_name: m.dense_weight() for m in model.modules() if isinstance(m, LowRankLinear)}
