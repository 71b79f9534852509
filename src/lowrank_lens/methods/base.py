"""The method seam: five hooks whose defaults are full-rank AdamW.

The training loop calls only these hooks and never names a method (design.md, "Method plugin"):

    model = method.prepare_model(model)                 # module surgery, before DDP and dtype casts
    opt   = method.build_optimizer(model, cfg.optim)     # param groups; checked by check_param_groups
    lr    = base_lr * method.lr_multiplier(step)         # e.g. ReLoRA's jagged cosine
    extra = method.after_step(step, model, opt)          # e.g. ReLoRA merge + optimizer pruning
    W     = method.dense_weights(model)                  # effective W per target layer, or None (CoLA)

`step` is the number of updates completed: after_step(step=1) runs right after the first update.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError

# Attention q/k/v/o and MLP gate/up/down: the 7 matrices per block every reference method targets.
DEFAULT_TARGETS = ("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.o_proj",
                   "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj")


@dataclass
class MethodPreset:
    """A method's per-scale defaults: its own params plus changes to optim/train, with provenance notes."""

    params: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class BaseMethodConfig:
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """fnmatch patterns over module names selecting the target linears."""


class Method:
    """Full-rank AdamW. Subclasses override what their method changes and nothing else."""

    name: ClassVar[str] = "full-rank"
    Config: ClassVar[type] = BaseMethodConfig
    has_dense_view: ClassVar[bool] = True
    """False when no dense W exists (CoLA: a SiLU sits between the factors)."""
    no_dense_reason: ClassVar[str] = ""
    is_baseline: ClassVar[bool] = False
    """True for the method other methods are compared with (activation similarity's default reference)."""
    colour: ClassVar[str] = "#1f77b4"
    """Fixed plot colour of the method (the study's, paper.md §1.1), so figures agree across reports."""

    def __init__(self, cfg: Any, run: RunConfig) -> None:
        self.cfg = cfg
        self.run = run

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def preset(cls, scale: str, model_hidden: int) -> MethodPreset:
        """Per-scale defaults (paper.md §1.4 for the study's scales). `model_hidden` sizes CPU presets."""
        return MethodPreset()

    # ---- hooks ---------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                                 weight_decay=optim.weight_decay)

    def lr_multiplier(self, step: int) -> float:
        """Multiplier of optim.lr for the update that takes the model from `step` to `step + 1`."""
        o, t = self.run.optim, self.run.train
        return warmup_cosine(step, t.steps, o.warmup_steps, o.min_lr_ratio)

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Runs after each update (step = updates done). Returns extra scalars for the log."""
        return {}

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Effective weight (out x in) of every target layer, keyed by module name; None if none exists."""
        return {name: mod.weight.detach() for name, mod in target_modules(model, self.cfg.targets)}

    def factors(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]] | None:
        """Trained factors per target layer (e.g. {'A': r x in, 'B': out x r}) for methods without a dense
        view; None when the dense view is the natural object."""
        return None


# ---- helpers shared by methods -----------------------------------------------------------------
def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. (seed, step, layer name)), not on process or RNG
    state, so every DDP rank and every resumed run draws the same numbers."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup from 0, then cosine from 1 to min_ratio (the reference `get_scheculer` cosine).

    As in the reference LambdaLR, the first update (step 0) has multiplier 0 when warmup > 0.
    """
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def target_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """Modules whose names match any pattern, in model order. A pattern matching nothing is an error."""
    names = [n for n, _ in model.named_modules()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise LensError(f"target pattern {pat!r} matches no module; module names look like "
                            f"{names[min(5, len(names) - 1)]!r}")
    return [(n, m) for n, m in model.named_modules() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_param_groups(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every trainable parameter sits in exactly one optimizer group, and nothing else does."""
    seen: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters()}
    twice = [names.get(i, "?") for i, c in seen.items() if c > 1]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    frozen = [names[i] for i in seen if i in names and not dict(model.named_parameters())[names[i]].requires_grad]
    if twice or missing or frozen:
        raise RuntimeError(f"optimizer groups are wrong: in several groups {twice[:3]}, missing {missing[:3]}, "
                           f"frozen but optimized {frozen[:3]}")
