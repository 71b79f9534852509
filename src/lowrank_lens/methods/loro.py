"""LORO: W = B A factors trained with a low-rank Riemannian optimizer (Mo, Huang & Pan, ICLR 2025).

    y = B (A x),   W = B A      A: r x in, B: out x r (the Low-Rank layer, methods/low_rank.py)

Every target linear is replaced by a factor pair, as Low-Rank; what differs is the optimizer
(`optim/loro_adamw.py`, official code mzf666/LORO-main): Adam moments on the factors, cheap "lazy" updates of
each factor by its Adam direction scaled by r / hidden, and every K updates an exact Riemannian step that moves
the product B A along the tangent-space projection of the gradient and retracts it to rank r by a small SVD,
after which all Adam moments restart from zero. The embedding, LM head and norms train with plain AdamW.

Schedule (`schedule="loro"`, the scripts' `--scheduler cosine_restart --cosine_restart_freq K
--cosine_restart_warmup 5 --lr_adjust_steps -steps/10`, `peft_pretraining/training_utils.py`): see
`loro_schedule`. Init (`--loro_init xavier`): each factor Xavier-normal, A ~ N(0, 2/(in+r)), B ~ N(0, 2/(out+r)),
from a CPU generator seeded by (train.seed, method, layer name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.loro_adamw import REFRESH_MODES, LOROAdamW
from . import register
from .base import MethodPreset
from .low_rank import LowRank, LowRankConfig, LowRankLinear
from .ranks import auto_rank
from .schedule import stable_seed
from .shapes import Footprint, lowrank_factors, model_parameters, param_bytes, target_matrices
from .surgery import replace_linears

SCHEDULES = ("loro", "cosine")
_RESTART_EPS = 1e-6  # the official schedule's floor at the start of a re-warmup (its `eps` argument)


class LOROLinear(LowRankLinear):
    """The Low-Rank layer y = B (A x) with LORO's Xavier-normal init; a class of its own so that each plugin
    finds only its own layers."""

    def reset_parameters(self, seed: int) -> None:
        """A ~ N(0, 2/(in+r)) and B ~ N(0, 2/(out+r)): torch's xavier_normal_ of the official (in x r) and
        (out x r) factors. CPU draws, A first."""
        if self.A.is_meta:
            return
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.A.copy_(torch.randn(self.A.shape, generator=g) * math.sqrt(2 / (self.in_features + self.rank)))
            self.B.copy_(torch.randn(self.B.shape, generator=g) * math.sqrt(2 / (self.out_features + self.rank)))


def loro_schedule(step: int, total: int, warmup: int, cycle: int, restart_warmup: int, shift: int,
                  min_ratio: float) -> float:
    """The official `cosine_restart` multiplier for the update from `step` (lr_adjust_steps = -shift).

    The envelope is a cosine from 1 to min_ratio over [warmup, total] evaluated at step - shift, so it peaks at
    warmup + shift and ends above min_ratio. The first warmup rises linearly from min_ratio (not 0) to the
    envelope's value at progress -shift / (total - warmup). Re-warmups: for k = s // cycle > 0 and
    j = s % cycle < restart_warmup (s = step, shifted by -shift after the first warmup; python floor division,
    so a negative s never restarts), the multiplier ramps from 1e-6 by j / restart_warmup towards the envelope
    at the cycle start (during the first warmup: towards the warmup line at k·cycle). With the scripts' shift a
    multiple of K, the ramps start at the updates right after each exact step and moment refresh.
    """
    span = max(1, total - warmup)

    def cosine(progress: float) -> float:  # the official evaluation order, so the two agree to the last bit
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    if step < warmup:
        peak = 0.5 * (1.0 + math.cos(math.pi * shift / span))
        k, j = divmod(step, cycle)
        if j < restart_warmup and k != 0:
            target = k * cycle / max(1, warmup) * (peak - min_ratio) + min_ratio
            return j / max(1, restart_warmup) * (target - _RESTART_EPS) + _RESTART_EPS
        return step / max(1, warmup) * (peak - min_ratio) + min_ratio
    s = step - shift
    k, j = divmod(s, cycle)
    if j < restart_warmup and k > 0:
        target = min_ratio + (1.0 - min_ratio) * cosine((k * cycle - warmup) / span)
        return j / max(1, restart_warmup) * (target - _RESTART_EPS) + _RESTART_EPS
    return min_ratio + (1.0 - min_ratio) * cosine((s - warmup) / span)


@dataclass
class LOROConfig(LowRankConfig):
    exact_every: int = 500
    """K: the exact Riemannian step replaces the lazy one at updates K, 2K, ... (`--loro_freq`); the moments
    restart after it and the schedule's cycle is K (the scripts set all three frequencies equal)."""
    lazy_lr_scale: float = 0.0
    """s: the lazy updates move each factor by lr·s·N (`--loro_lr_scaler`); 0 = rank / hidden_size (the
    scripts' -1), computed from the final shape when the optimizer is built (kept as the rule, not resolved to
    a number, because r / hidden such as 1/3 has no exact short decimal for config.json and the notes)."""
    refresh: str = "all"
    """Moments reset after each exact step: 'all' (the scripts), 'lowrank', 'regular' or 'none'."""
    schedule: str = "loro"
    """'loro': the official jagged, shifted cosine (`loro_schedule`); 'cosine': the shared warmup + cosine."""
    restart_warmup_steps: int = 5
    """Length of the lr re-warmup at the start of each cycle (`--cosine_restart_warmup`, default 5)."""
    lr_shift: float = 0.1
    """The cosine lags by lr_shift x train.steps updates (the scripts' `--lr_adjust_steps` = -steps/10)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.exact_every < 1:
            raise LensError(f"method.exact_every must be >= 1 (an exact LORO step every K updates), got "
                            f"{self.exact_every}")
        if self.lazy_lr_scale < 0:
            raise LensError(f"method.lazy_lr_scale must be >= 0 (0 = rank / hidden_size), got {self.lazy_lr_scale}")
        if self.refresh not in REFRESH_MODES:
            raise LensError(f"method.refresh {self.refresh!r} is not one of {', '.join(REFRESH_MODES)}")
        if self.schedule not in SCHEDULES:
            raise LensError(f"method.schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.restart_warmup_steps < 0:
            raise LensError(f"method.restart_warmup_steps must be >= 0, got {self.restart_warmup_steps}")
        if not 0 <= self.lr_shift < 1:
            raise LensError(f"method.lr_shift must be in [0, 1) (a fraction of train.steps), got {self.lr_shift}")


# rank, lr, K per scale: scripts/loro_c4/llama_<scale>.sh (attention and MLP ranks are equal in all four).
_REFERENCE = {"60m": (128, 1e-2, 500), "130m": (256, 1e-2, 500), "350m": (256, 1e-2, 500), "1b": (512, 5e-3, 200)}
_STEPS = {"60m": 10_000, "130m": 20_000, "350m": 60_000, "1b": 100_000}  # the scripts' --num_training_steps
_CPU_K = 10  # 20 (nano) to 150 (micro) updates: 2 to 15 exact steps, where the scripts' 500 would give none
_SCRIPT_NOTE = ("as the scripts: Xavier init, the moments of all groups refreshed after each exact step "
                "(--loro_refresh all), lazy lr scale = rank/hidden (--loro_lr_scaler -1), the jagged cosine of "
                "--scheduler cosine_restart restarting every K updates (--cosine_restart_freq = --loro_freq); "
                "LOROAdamW's default eps 1e-6; bf16, batch 512 and the steps are the shared recipe's")


@register
class LORO(LowRank):
    """W = B A per target, trained by LORO: lazy Adam factor steps, an exact Riemannian step every K updates."""

    name = "loro"
    description = ("Every target linear becomes a rank-r product B A trained by the low-rank Riemannian optimizer "
                   "LORO: lazy Adam factor steps and an exact tangent-space step + SVD retraction every K updates")
    colour = "#f7b6d2"
    Config = LOROConfig
    memory_formula = ("as Low-Rank: E + L·r·(11h + 3i) trainable, state 2 x that; the step counters are python "
                      "ints, and the exact step's temporaries are r-sized apart from one layer's factors.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        base = {"refresh": "all", "schedule": "loro", "lazy_lr_scale": 0.0}
        optim: dict[str, Any] = {"weight_decay": 0.0, "grad_clip": 0.0, "eps": 1e-6}
        if scale not in _REFERENCE:
            return MethodPreset(
                params={**base, "rank": 0, "exact_every": _CPU_K, "restart_warmup_steps": 2, "lr_shift": 0.0},
                optim={**optim, "lr": 1e-2},
                notes=[f"LORO {scale}: rank = hidden/4 (the 60m ratio 128/512), lr 1e-2, exact step every {_CPU_K} "
                       "updates, restart warmup 2, wd 0, eps 1e-6, no clipping, no lr shift; K 10 (not 500) so "
                       "the few updates take several exact steps, a 2-step re-warmup to fit the 10-step cycles, "
                       "and no shift (method.lr_shift 0) so each re-warmup follows a refresh", _SCRIPT_NOTE])
        rank, lr, k = _REFERENCE[scale]
        warmup = "warmup 2000 (the script's, not 10%)" if scale == "350m" else "10% warmup"
        notes = [f"LORO {scale}: rank {rank}, lr {lr:g}, exact step every {k} updates, restart warmup 5, wd 0, "
                 f"eps 1e-6, no clipping, {warmup}, cosine shifted by 10% of train.steps (mzf666/LORO-main "
                 f"scripts/loro_c4/llama_{scale}.sh: --loro_attn_rank {rank} --loro_mlp_rank {rank} --loro_freq {k} "
                 f"--lr {lr:g} --lr_adjust_steps -{_STEPS[scale] // 10}; --cosine_restart_warmup is the "
                 "argparse default 5)", _SCRIPT_NOTE]
        if scale == "350m":
            notes.append("350m: the shift of 6000 updates exceeds the 2000 of warmup, so the official schedule has "
                         "no re-warmups between updates 2000 and 6500 while the refreshes go on; kept as run")
        return MethodPreset(params={**base, "rank": rank, "exact_every": k, "restart_warmup_steps": 5,
                                    "lr_shift": 0.1},
                            optim={**optim, "lr": lr, **({"warmup_steps": 2000} if scale == "350m" else {})},
                            notes=notes)

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        super().check_config(run)  # targets are bias-free linears; rank <= min(out, in)
        cfg: LOROConfig = run.method_cfg
        rank = auto_rank(cfg.rank, run.model)
        name, (out, inn) = min(target_matrices(run.model, cfg.targets, linear_only=True).items(),
                               key=lambda kv: min(kv[1]))
        if 2 * rank > min(out, inn):
            raise LensError(f"method.rank {rank}: LORO's exact step spans 2r = {2 * rank} directions on each side, "
                            f"more than min(out, in) = {min(out, inn)} of {name}; use method.rank <= "
                            f"{min(out, inn) // 2}")
        if cfg.schedule == "loro" and cfg.restart_warmup_steps >= cfg.exact_every:
            raise LensError(f"method.restart_warmup_steps {cfg.restart_warmup_steps} must be < method.exact_every "
                            f"{cfg.exact_every}, else every cycle is all re-warmup")

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """Low-Rank's tensors; the state is two moments per trainable tensor, its step counter a python int."""
        targets = target_matrices(run.model, run.method_cfg.targets, linear_only=True)
        plain = tuple(model_parameters(run.model, exclude=tuple(targets)).values())
        factors = lowrank_factors(list(targets.values()), auto_rank(run.method_cfg.rank, run.model))
        state = ({"exp_avg": sum(plain), "exp_avg_sq": sum(plain)},
                 {"exp_avg": sum(factors), "exp_avg_sq": sum(factors)})
        return Footprint(trainable=(*plain, *factors), state=state,
                         state_bytes=2 * param_bytes(run) * (sum(plain) + sum(factors)))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Low-Rank's surgery with LORO's layer and init: every target bias-free Linear becomes a LOROLinear."""
        rank = auto_rank(self.cfg.rank, self.run.model)

        def wrap(name: str, mod: nn.Linear) -> LOROLinear:
            new = LOROLinear(mod.in_features, mod.out_features, rank, name, device=mod.weight.device,
                             dtype=mod.weight.dtype)
            new.reset_parameters(stable_seed(self.run.train.seed, self.name, name))
            return new

        replace_linears(model, self.cfg.targets, self.name, wrap)
        return model

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        layers = self.layers(model)
        pairs = [p for m in layers for p in (m.B, m.A)]
        ids = {id(p) for p in pairs}
        plain = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        cfg: LOROConfig = self.cfg
        lowrank = {"params": pairs, "lowrank": True, "exact_every": cfg.exact_every, "lazy_scale": self.lazy_scale()}
        return LOROAdamW([{"params": plain}, lowrank], lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                         weight_decay=optim.weight_decay, refresh=cfg.refresh)

    def lazy_scale(self) -> float:
        """method.lazy_lr_scale, where 0 means the official rank / hidden_size."""
        return self.cfg.lazy_lr_scale or auto_rank(self.cfg.rank, self.run.model) / self.run.model.hidden_size

    def lr_multiplier(self, step: int) -> float:
        if self.cfg.schedule == "cosine":
            return super().lr_multiplier(step)
        o, t, cfg = self.run.optim, self.run.train, self.cfg
        return loro_schedule(step, t.steps, o.warmup_steps, cfg.exact_every, cfg.restart_warmup_steps,
                             round(cfg.lr_shift * t.steps), o.min_lr_ratio)

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Keeps the optimizer's update count equal to the loop's step (a skipped non-finite update does not call
        the optimizer), so the exact steps stay on the multiples of K where the schedule restarts. Logs
        `loro_exact` (0/1): whether the update just made was exact."""
        for group in optimizer.param_groups:
            if group.get("lowrank"):
                group["updates"] = step
        return {"loro_exact": float(step % self.cfg.exact_every == 0)}

    @staticmethod
    def layers(model: nn.Module) -> list[LOROLinear]:
        return [m for m in model.modules() if isinstance(m, LOROLinear)]

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """{layer name: B A} (out x in): the exact matrix each layer applies, of rank <= r."""
        return {m.layer_name: m.dense_weight() for m in self.layers(model)}
