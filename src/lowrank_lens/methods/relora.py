"""ReLoRA: frozen W plus a LoRA that is merged into W and restarted every `reset_every` steps (methods.md §6).

    y = x W^T + (alpha/r) B A(dropout(x))      W frozen (out x in), A: r x in, B: out x r, dropout 0.1

Timing (methods.md §6.2-6.4), with the loop's conventions: `lr_multiplier(s)` is the multiplier of the update
taking the model from step s to s+1, and `after_step(s)` runs once s updates are done. Let R = reset_every.

* lr_multiplier(s): linear warmup s / warmup_steps while s < warmup_steps; otherwise, for k = s // R >= 1 and
  s - k R < restart_warmup_steps, the ramp (s - k R) / restart_warmup_steps x envelope(k R + restart_warmup);
  otherwise envelope(s), where envelope is the single global cosine from 1 to min_lr_ratio over
  [warmup_steps, train.steps]. So lr_multiplier(k R) = 0 for every k >= 1 (unless still in the first warmup,
  which takes precedence, as in the reference).
* after_step(s) merges and resets exactly when s > R and s % R == 1, i.e. at s = R+1, 2R+1, 3R+1, ...: right
  after the update made with lr 0 (the one from kR to kR+1), "one step after the lr hits 0". It then
  (1) merges W += (alpha/r) B A in the parameters' dtype (bf16 under pure bf16, as in the reference),
  (2) re-initialises A ~ kaiming_uniform(a=sqrt(5)) and B = 0, and (3) prunes, in place, the Adam moments
  (exp_avg, exp_avg_sq) of the LoRA parameters only; Adam's step counter is kept (methods.md §6.3).
  The update from kR+1 to kR+2 then runs at lr (1/restart_warmup) x envelope(kR + restart_warmup).

All randomness of a reset (new A, pruning masks) comes from generators seeded by (train.seed, step, layer),
so every DDP rank makes identical changes without communicating, and a resumed run repeats them.

`zero_init_bug` reproduces the reference HEAD (ReLoRA issue #18, methods.md §6.6): A = B = 0 at wrap, so the
wrapped matrices get zero gradients for the whole first cycle; the study inherited it. Later re-inits are
the intended ones either way. A warm start is the loop's business: it loads `train.init_from` before
`prepare_model`, so the frozen W is whatever weight the model holds at wrap time (methods.md §6.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..errors import LensError
from . import register
from .base import BaseMethodConfig, Method, MethodPreset, replace_module, stable_seed, target_modules

PRUNE_MODES = ("random", "magnitude")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")



class ReLoRALinear(nn.Module):
    """Frozen W plus (alpha/r) B A(dropout(x)); wraps a bias-free nn.Linear and keeps its weight (§6.1)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, layer_name: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = base.in_features, base.out_features, rank
        self.scale = alpha / rank
        self.layer_name = layer_name  # the module name at wrap time: stable seeds and dense-view keys
        # The original Parameter, frozen; keeping the name `weight` keeps checkpoints readable as W.
        self.weight = base.weight
        self.weight.requires_grad_(False)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # r x in
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, **kw))  # out x r
        self.dropout = nn.Dropout(dropout)

    @torch.no_grad()
    def reset_lora(self, seed: int, zero_a: bool = False) -> None:
        """A ~ kaiming_uniform(a=sqrt(5)) drawn on CPU from `seed` (or 0 under the #18 bug), B = 0."""
        if self.lora_A.is_meta:
            return
        a = torch.zeros(self.lora_A.shape)
        if not zero_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
        self.lora_A.copy_(a)
        self.lora_B.zero_()

    @torch.no_grad()
    def merge(self) -> None:
        """W += (alpha/r) B A, computed and added in W's dtype (bf16 under pure bf16, as the reference)."""
        delta = (self.lora_B.to(self.weight.dtype) @ self.lora_A.to(self.weight.dtype)) * self.scale  # out x in
        self.weight.add_(delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        lora = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # [..., r] -> [..., out]
        return F.linear(x, self.weight) + self.scale * lora

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The exact W + (alpha/r) B A (out x in) this layer applies in eval mode, in W's dtype."""
        w = self.weight.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())
        return w.to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.rank}, scale={self.scale:g}"


def jagged_cosine(step: int, total: int, warmup: int, cycle: int, restart_warmup: int, min_ratio: float) -> float:
    """ReLoRA's `cosine_restarts` multiplier (methods.md §6.4); see the module docstring for the timing."""

    def envelope(s: int) -> float:
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    if step < warmup:
        return step / warmup
    k, into = divmod(step, cycle)
    if k >= 1 and into < restart_warmup:
        return into / restart_warmup * envelope(k * cycle + restart_warmup)
    return envelope(step)


@torch.no_grad()
def prune_(state: torch.Tensor, mode: str, ratio: float, generator: torch.Generator | None) -> None:
    """Zero about `ratio` of `state` in place (ReLoRA issue #10: never swap the tensor, zero it).

    random: keep entries whose U(0,1) draw exceeds `ratio`. magnitude: keep entries whose |value| exceeds
    the `ratio`-quantile of |state| (nearest rank; the reference interpolates with torch.quantile).
    """
    if ratio <= 0 or state.numel() == 0:
        return
    if mode == "random":
        keep = torch.rand(state.shape, generator=generator, device=state.device) > ratio
    else:
        mag = state.abs().float().flatten()
        k = min(mag.numel(), max(1, math.ceil(ratio * mag.numel())))
        keep = state.abs().float() > mag.kthvalue(k).values
    state.mul_(keep.to(state.dtype))


@dataclass
class ReLoRAConfig(BaseMethodConfig):
    rank: int = 0
    """r; 0 = model.hidden_size // 4 (the 60m ratio)."""
    alpha: float = 32.0
    """LoRA scale alpha / rank (`--lora_alpha`, default 32)."""
    dropout: float = 0.1
    """LoRA input dropout (hard-coded 0.1 in the reference)."""
    reset_every: int = 0
    """R: merge, re-init, prune and restart the lr every R steps (the reference's `--relora` and
    `--cycle_length`, equal in every script); 0 = max(2, train.steps // 4)."""
    restart_warmup_steps: int = 0
    """Linear lr ramp after each restart; 0 = max(1, R // 10) (the 60m ratio 100/1000). Must be < R."""
    prune: str = "random"
    """How the LoRA Adam moments are pruned at a reset: 'random' or 'magnitude' (methods.md §6.3)."""
    prune_ratio: float = 0.999
    """Fraction of moment entries zeroed at a reset; the reference default is random 0.999, the study
    uses random 0.99, the README suggests magnitude 0.9; 0 keeps the moments."""
    zero_init_bug: bool = False
    """Reproduce the reference HEAD's A = B = 0 at wrap (issue #18): the first cycle trains no LoRA."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise LensError(f"method.rank must be >= 0 (0 = hidden_size // 4), got {self.rank}")
        if self.prune not in PRUNE_MODES:
            raise LensError(f"method.prune {self.prune!r} is not one of {', '.join(PRUNE_MODES)}")
        if not 0 <= self.prune_ratio <= 1:
            raise LensError(f"method.prune_ratio must be in [0, 1], got {self.prune_ratio}")
        if not 0 <= self.dropout < 1:
            raise LensError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if self.reset_every < 0 or self.restart_warmup_steps < 0:
            raise LensError("method.reset_every and method.restart_warmup_steps must be >= 0 (0 = automatic)")
        if self.alpha <= 0:
            raise LensError(f"method.alpha must be positive, got {self.alpha}")


# rank, reset_every, restart_warmup_steps, lr, grad_clip: paper.md §1.4 (60m/130m/350m), methods.md §6.7 (1b)
_STUDY = {
    "60m": (128, 1000, 100, 1e-3, 1.0),
    "130m": (256, 5000, 100, 1e-3, 1.0),
    "350m": (256, 5000, 200, 5e-4, 0.0),
    "1b": (512, 5000, 200, 4e-4, 1.0),
}


@register
class ReLoRA(Method):
    """LoRA with periodic merges, optimizer pruning and a jagged cosine; AdamW on the trainable params."""

    name = "relora"
    colour = "#9467bd"
    Config = ReLoRAConfig

    def __init__(self, cfg: ReLoRAConfig, run: RunConfig) -> None:
        super().__init__(cfg, run)
        self.reset_every = cfg.reset_every or max(2, run.train.steps // 4)
        self.restart_warmup = cfg.restart_warmup_steps or max(1, self.reset_every // 10)
        if self.reset_every < 2 or self.restart_warmup >= self.reset_every:
            raise LensError(f"relora needs 1 <= restart_warmup_steps < reset_every and reset_every >= 2; got "
                            f"{self.restart_warmup} and {self.reset_every}")

    @classmethod
    def preset(cls, scale: str, model_hidden: int) -> MethodPreset:
        bug = ("the study inherited the reference's A = B = 0 init (issue #18, methods.md §6.6); this preset "
               "uses the intended init: set method.zero_init_bug=true to reproduce the study")
        if scale not in _STUDY:
            r = max(1, model_hidden // 4)
            return MethodPreset(params={"rank": r, "alpha": r / 4, "prune": "random", "prune_ratio": 0.99},
                                optim={"grad_clip": 1.0},
                                notes=["CPU preset: rank = hidden // 4 and alpha = rank / 4 (the 60m ratios); "
                                       "reset_every = steps // 4, restart warmup = reset_every // 10", bug])
        rank, every, rw, lr, clip = _STUDY[scale]
        notes = [f"ReLoRA {scale}: r {rank}, alpha 32, dropout 0.1, reset every {every}, restart warmup {rw}, "
                 f"lr {lr:g}, clip {clip:g}, random pruning 0.99 of the LoRA moments, no warm start "
                 "(paper.md §1.4)", bug]
        if scale == "350m":
            notes.append("warmup 6000 > reset_every 5000: the first merge (step 5001) happens inside the first "
                         "warmup, which the reference schedule lets take precedence (no lr drop at 5000)")
        if scale == "1b":
            notes.append("1b is not in the study: r 512 as GaLore's 1B low-rank baselines; reset 5000 / restart "
                         "warmup 200 as the study's 350m; lr 4e-4 and clip 1.0 from the reference's 1B config "
                         "and argparse (methods.md §6.7); that config's Pile-specific beta2 0.95, wd 0.01 and "
                         "magnitude pruning 0.8 are not adopted; the 10K warmup spans the first restart")
        return MethodPreset(params={"rank": rank, "alpha": 32.0, "dropout": 0.1, "reset_every": every,
                                    "restart_warmup_steps": rw, "prune": "random", "prune_ratio": 0.99},
                            optim={"lr": lr, "grad_clip": clip}, notes=notes)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        cfg: ReLoRAConfig = self.cfg
        rank = cfg.rank or max(1, self.run.model.hidden_size // 4)
        for name, mod in target_modules(model, cfg.targets):
            if not isinstance(mod, nn.Linear) or mod.bias is not None:
                raise LensError(f"relora wraps bias-free nn.Linear layers; {name} is {type(mod).__name__}"
                                f"{' with a bias' if isinstance(mod, nn.Linear) else ''}")
            new = ReLoRALinear(mod, rank, cfg.alpha, cfg.dropout, name)
            new.reset_lora(stable_seed(self.run.train.seed, "relora", 0, name), zero_a=cfg.zero_init_bug)
            replace_module(model, name, new)
        return model

    def lr_multiplier(self, step: int) -> float:
        o = self.run.optim
        return jagged_cosine(step, self.run.train.steps, o.warmup_steps, self.reset_every, self.restart_warmup,
                             o.min_lr_ratio)

    def is_reset_step(self, step: int) -> bool:
        """True for step = kR + 1, k >= 1: the after_step calls that merge and prune."""
        return step > self.reset_every and step % self.reset_every == 1

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Merge, re-init and prune at the reset steps (module docstring). Logs `relora_merge` (0/1) every
        step and, at a reset, `relora_pruned_frac`: the fraction of LoRA moment entries that are zero after
        pruning, measured on the optimizer state itself (a reset that pruned nothing shows up, methods.md §6.9)."""
        if not self.is_reset_step(step):
            return {"relora_merge": 0.0}
        layers = [m for m in model.modules() if isinstance(m, ReLoRALinear)]
        for m in layers:
            m.merge()
            m.reset_lora(stable_seed(self.run.train.seed, "relora", step, m.layer_name))
        lora = {id(p) for m in layers for p in (m.lora_A, m.lora_B)}
        cfg: ReLoRAConfig = self.cfg
        gens: dict[torch.device, torch.Generator] = {}
        zeros = total = 0
        for group in optimizer.param_groups:  # the same order on every rank, hence the same masks
            for p in group["params"]:
                if id(p) not in lora:
                    continue
                for key in MOMENT_KEYS:
                    state = optimizer.state.get(p, {}).get(key)
                    if state is None:
                        continue
                    if state.device not in gens:
                        gens[state.device] = torch.Generator(state.device).manual_seed(
                            stable_seed(self.run.train.seed, "relora-prune", step))
                    prune_(state, cfg.prune, cfg.prune_ratio, gens[state.device])
                    zeros += int((state == 0).sum())
                    total += state.numel()
        return {"relora_merge": 1.0, "relora_pruned_frac": zeros / total if total else 0.0}

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {m.layer_name: m.dense_weight() for m in model.modules() if isinstance(m, ReLoRALinear)}
