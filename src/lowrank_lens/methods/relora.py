"""ReLoRA: frozen W plus a LoRA that is merged into W and restarted every `reset_every` steps (docs/methods.md §6).

    y = x W^T + (alpha/r) B A(dropout(x))      W frozen (out x in), A: r x in, B: out x r, dropout 0.1

Timing (docs/methods.md §6.2-6.4), with the loop's conventions: `lr_multiplier(s)` is the multiplier of the update
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
  (exp_avg, exp_avg_sq) of the LoRA parameters only; Adam's step counter is kept (docs/methods.md §6.3).
  The update from kR+1 to kR+2 then runs at lr (1/restart_warmup) x envelope(kR + restart_warmup).

All randomness of a reset (new A, pruning masks) comes from generators seeded by (train.seed, step, layer),
so every DDP rank makes identical changes without communicating, and a resumed run repeats them.

`zero_init_bug` reproduces the reference HEAD (ReLoRA issue #18, docs/methods.md §6.6): A = B = 0 at wrap, so the
wrapped matrices get zero gradients for the whole first cycle; the study inherited it. Later re-inits are
the intended ones either way. A warm start is the loop's business: it loads `train.init_from` before
`prepare_model`, so the frozen W is whatever weight the model holds at wrap time (docs/methods.md §6.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..errors import LensError
from ..sharding import add_full_, full, is_sharded, local, set_full_
from . import register
from .base import MethodPreset
from .ranks import RankedConfig, RankedMethod, auto_alpha, auto_rank
from .reading import CheckpointReader, drop_rope_buffers, refuse_keys, side_json, tensor_stems
from .schedule import stable_seed
from .shapes import Footprint, adamw_footprint, factored_parameters
from .surgery import replace_linears

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
        set_full_(self.lora_A, a)  # the whole draw on every rank; a shard keeps its rows (FSDP2)
        local(self.lora_B).zero_()

    @torch.no_grad()
    def _delta(self) -> torch.Tensor:
        """(alpha/r) B A (out x in) in W's dtype (bf16 under pure bf16, as the reference merges)."""
        return (full(self.lora_B).to(self.weight.dtype) @ full(self.lora_A).to(self.weight.dtype)) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """W += (alpha/r) B A, computed and added in W's dtype (bf16 under pure bf16, as the reference)."""
        add_full_(self.weight, self._delta())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        lora = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # [..., r] -> [..., out]
        return F.linear(x, self.weight) + self.scale * lora

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """W + (alpha/r) B A (out x in): bitwise the weight a merge now would leave (the same ops in W's dtype),
        so an analysis of the dense view sees what the run's next merge makes of it."""
        return self.weight + self._delta()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.rank}, scale={self.scale:g}"


def jagged_cosine(step: int, total: int, warmup: int, cycle: int, restart_warmup: int, min_ratio: float) -> float:
    """ReLoRA's `cosine_restarts` multiplier (docs/methods.md §6.4); see the module docstring for the timing."""

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


def frozen_base_footprint(run: RunConfig) -> Footprint:
    """ReLoRA's and LoRA's memory: the targets' W stay as frozen parameters; their LoRA factors and every
    other parameter train with AdamW."""
    targets, trainable = factored_parameters(run, auto_rank(run.method_cfg.rank, run.model))
    return adamw_footprint(run, trainable, frozen=tuple(m * n for m, n in targets.values()))


@dataclass
class ReLoRAConfig(RankedConfig):
    rank: int = 0
    """r; 0 = model.hidden_size // 4 (the 60m ratio), resolved from the final shape."""
    alpha: float = 32.0
    """LoRA scale alpha / rank (`--lora_alpha`, default 32); 0 = rank / 4 (scale 0.25, the reference's
    32 / 128), resolved from the final rank."""
    dropout: float = 0.1
    """LoRA input dropout (hard-coded 0.1 in the reference)."""
    reset_every: int = 0
    """R: merge, re-init, prune and restart the lr every R steps (the reference's `--relora` and
    `--cycle_length`, equal in every script); 0 = max(2, train.steps // 4), resolved from the final steps."""
    restart_warmup_steps: int = 0
    """Linear lr ramp after each restart; 0 = max(1, R // 10) (the 60m ratio 100/1000). Must be < R."""
    prune: str = "random"
    """How the LoRA Adam moments are pruned at a reset: 'random' or 'magnitude' (docs/methods.md §6.3)."""
    prune_ratio: float = 0.999
    """Fraction of moment entries zeroed at a reset; the reference default is random 0.999, the study
    uses random 0.99, the README suggests magnitude 0.9; 0 keeps the moments."""
    zero_init_bug: bool = False
    """Reproduce the reference HEAD's A = B = 0 at wrap (issue #18): the first cycle trains no LoRA."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prune not in PRUNE_MODES:
            raise LensError(f"method.prune {self.prune!r} is not one of {', '.join(PRUNE_MODES)}")
        if not 0 <= self.prune_ratio <= 1:
            raise LensError(f"method.prune_ratio must be in [0, 1], got {self.prune_ratio}")
        if not 0 <= self.dropout < 1:
            raise LensError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if self.reset_every < 0 or self.restart_warmup_steps < 0:
            raise LensError("method.reset_every and method.restart_warmup_steps must be >= 0 (0 = automatic)")
        if self.alpha < 0:
            raise LensError(f"method.alpha must be >= 0 (0 = rank / 4), got {self.alpha}")


def restart_cycle(cfg: ReLoRAConfig, steps: int) -> tuple[int, int]:
    """(R, restart warmup) with their automatic values filled in; LensError unless 1 <= warmup < R, R >= 2."""
    every = cfg.reset_every or max(2, steps // 4)
    warmup = cfg.restart_warmup_steps or max(1, every // 10)
    if every < 2 or warmup >= every:
        raise LensError(f"method.restart_warmup_steps ({warmup}) must be below method.reset_every ({every}) and "
                        f"reset_every >= 2 (0 = automatic: train.steps // 4 and reset_every // 10)")
    return every, warmup


class ReLoRAReader(CheckpointReader):
    """Reads the official ReLoRA script's checkpoints too (`lowrank-lens import`)."""

    @classmethod
    def official_layout(cls, folder: Path, keys: list[str]) -> bool:
        """The official script's save_pretrained of its wrapped LLaMA: relora_config.json beside it, and per
        target t.weight (frozen W), t.lora_A.weight (r x in), t.lora_B.weight (out x r)."""
        return (folder / "relora_config.json").is_file() or any(k.endswith(".lora_A.weight") for k in keys)

    @classmethod
    def from_official(cls, folder: Path, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """Our names (t.lora_A, t.lora_B); a trained scale (--train_scaling) or a lora_only run (no frozen W)
        has no counterpart here and is refused. relora_config.json's r / lora_alpha become rank / alpha (its
        lora_only and trainable_scaling entries are always false in the official code, so the tensors decide)."""
        state, side = drop_rope_buffers(state), side_json(folder, "relora_config.json")
        refuse_keys(state, ".scaling", ReLoRA.name, "a trained scale, --train_scaling")
        stems = tensor_stems(state, ".lora_A.weight")
        missing = [t for t in stems if f"{t}.weight" not in state]
        if missing:
            raise LensError(f"the official {ReLoRA.name} checkpoint has no frozen {missing[0]}.weight (a lora_only "
                            f"run), which the {ReLoRA.name} plugin does not represent; it cannot be imported")
        out = {k.removesuffix(".weight") if k.endswith((".lora_A.weight", ".lora_B.weight")) else k: v
               for k, v in state.items()}
        rank = int(side.get("r") or state[f"{stems[0]}.lora_A.weight"].shape[0])
        return out, {"rank": rank, "alpha": float(side.get("lora_alpha", 32.0)),
                     "dropout": float(side.get("lora_dropout", 0.1))}


# rank, reset_every, restart_warmup_steps, lr, grad_clip: docs/study.md §1.4 (60m/130m/350m), docs/methods.md §6.7 (1b)
_STUDY = {
    "60m": (128, 1000, 100, 1e-3, 1.0),
    "130m": (256, 5000, 100, 1e-3, 1.0),
    "350m": (256, 5000, 200, 5e-4, 0.0),
    "1b": (512, 5000, 200, 4e-4, 1.0),
}


@register
class ReLoRA(RankedMethod):
    """LoRA with periodic merges, optimizer pruning and a jagged cosine; AdamW on the trainable params."""

    name = "relora"
    scaled_by_alpha = True  # method.alpha 0 = rank / 4
    description = ("Frozen W plus a LoRA that is merged into W, re-initialised and restarted every R steps, "
                   "with optimizer pruning and a jagged cosine")
    colour = "#9467bd"
    Config = ReLoRAConfig
    Reader = ReLoRAReader
    linear_targets_only = True
    memory_formula = ("E + L·r·(11h + 3i) trainable; the frozen W, L(4h² + 3hi), has no gradient and no state; "
                      "state 2 x trainable + `step`s.")

    def __init__(self, cfg: ReLoRAConfig, run: RunConfig) -> None:
        super().__init__(cfg, run)
        self.reset_every, self.restart_warmup = restart_cycle(cfg, run.train.steps)

    @classmethod
    def resolve(cls, run: RunConfig) -> dict[str, Any]:
        cfg: ReLoRAConfig = run.method_cfg
        every, warmup = restart_cycle(cfg, run.train.steps)
        cycle = {k: v for k, v in (("reset_every", every), ("restart_warmup_steps", warmup)) if not getattr(cfg, k)}
        return {**super().resolve(run), **cycle}

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        super().check_config(run)
        restart_cycle(run.method_cfg, run.train.steps)

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        return frozen_base_footprint(run)

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        bug = ("the study inherited the reference's A = B = 0 init (issue #18, docs/methods.md §6.6); this preset "
               "uses the intended init: set method.zero_init_bug=true to reproduce the study")
        if scale not in _STUDY:
            return MethodPreset(params={"rank": 0, "alpha": 0.0, "reset_every": 0, "restart_warmup_steps": 0,
                                        "prune": "random", "prune_ratio": 0.99},
                                optim={"grad_clip": 1.0},
                                notes=[f"ReLoRA {scale}: rank = hidden/4, alpha = rank/4 (scale 0.25: the 60m "
                                       "ratios), dropout 0.1, reset_every = steps // 4, restart warmup = "
                                       "reset_every // 10, random pruning 0.99 of the LoRA moments, clip 1, no "
                                       "warm start", bug])
        rank, every, rw, lr, clip = _STUDY[scale]
        notes = [f"ReLoRA {scale}: r {rank}, alpha 32, dropout 0.1, reset every {every}, restart warmup {rw}, "
                 f"lr {lr:g}, clip {clip:g}, random pruning 0.99 of the LoRA moments, no warm start "
                 "(docs/study.md §1.4)", bug]
        # The study's fork of ReLoRA's scheduler (docs/methods.md §0) comments out upstream's assert that the first
        # warmup ends before the first reset; upstream Guitaricet/relora would refuse these two schedules.
        fork = ("only the study's fork allows this: NamrataRShivagunde/low-rank-geometry, "
                "training/ReLoRA/peft_pretraining/training_utils.py, comments out the assert of upstream "
                "Guitaricet/relora (peft_pretraining/training_utils.py, _get_cosine_schedule_with_multiple_"
                "warmups_lambda) that the first warmup ends before the first reset (docs/methods.md §0)")
        if scale == "350m":
            notes.append("warmup 6000 > reset_every 5000: the first merge (step 5001) happens inside the first "
                         "warmup, which takes precedence in the fork's schedule (no lr drop at 5000); " + fork)
        if scale == "1b":
            notes.append("1b is not in the study: r 512 as GaLore's 1B low-rank baselines; reset 5000 / restart "
                         "warmup 200 as the study's 350m; lr 4e-4 and clip 1.0 from the reference's 1B config "
                         "and argparse (docs/methods.md §6.7); that config's Pile-specific beta2 0.95, wd 0.01 and "
                         "magnitude pruning 0.8 are not adopted")
            notes.append("warmup 10000 > reset_every 5000: the 10K warmup spans the first restart; " + fork)
        return MethodPreset(params={"rank": rank, "alpha": 32.0, "dropout": 0.1, "reset_every": every,
                                    "restart_warmup_steps": rw, "prune": "random", "prune_ratio": 0.99},
                            optim={"lr": lr, "grad_clip": clip}, notes=notes)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        cfg: ReLoRAConfig = self.cfg
        rank = auto_rank(cfg.rank, self.run.model)
        alpha = auto_alpha(cfg.alpha, rank)

        def wrap(name: str, mod: nn.Linear) -> ReLoRALinear:
            new = ReLoRALinear(mod, rank, alpha, cfg.dropout, name)
            new.reset_lora(stable_seed(self.run.train.seed, "relora", 0, name), zero_a=cfg.zero_init_bug)
            return new

        replace_linears(model, cfg.targets, self.name, wrap)
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
        pruning, measured on the optimizer state itself (a reset that pruned nothing shows up, docs/methods.md §6.9)."""
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
                    whole = full(state)  # a mask or quantile of the whole moment, the same as one process
                    prune_(whole, cfg.prune, cfg.prune_ratio, gens[state.device])
                    if is_sharded(state):
                        set_full_(state, whole)
                    zeros += int((whole == 0).sum())
                    total += whole.numel()
        return {"relora_merge": 1.0, "relora_pruned_frac": zeros / total if total else 0.0}

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {m.layer_name: m.dense_weight() for m in model.modules() if isinstance(m, ReLoRALinear)}
