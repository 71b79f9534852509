"""SPAMAdamW: Adam with spike-aware clipping and periodic momentum reset (SPAM, arXiv 2501.06842, ICLR 2025).

The official optimizer is `galore_torch/SPAM.py` of TianjinYellow/SPAM-Optimizer (not on PyPI). Per parameter,
with k the number of this update (1-based, the official `total_step + 1`), β1, β2, eps, θ (threshold), ΔT (reset
interval), N (reset warmup) and d (clip delay, the official `grad_accu_steps`):

1. reset: when k % ΔT == 0, M ← 0 and V ← 0 (the step counter is *not* reset, so the bias correction keeps
   using k and the first update after a reset is about 1/sqrt(1-β2) / (1/(1-β1)) ≈ 3.2x larger than Adam's;
   the warmup of step 5 is what tames it);
2. spike-aware clipping, when θ > 0, k >= d and k % ΔT >= d (not in the first d updates of a cycle, whose V
   is too young): entries with g² > θ·V_{k-1} become sign(g)·sqrt(θ·V_{k-1}) (V *before* this update);
3. M ← β1 M + (1-β1) g, V ← β2 V + (1-β2) g² (g clipped);
4. N = M / (sqrt(V) + eps), step size lr·(sqrt(1-β2^k) / (1-β1^k));
5. W ← W - step_size · s_k · N, with s_k the cosine warmup after the last reset k_r (a multiple of ΔT):
   s = 1 - 0.99·(1 + cos(π j / (N+1))) / 2 for j = k - k_r < N, else 1 (1 before the first reset), i.e.
   0.01 at the reset itself (the official CosineDecay(0.99, N) through CosineAnnealingLR's closed form);
6. decoupled weight decay W ← W - lr·wd·W with the undecorated lr (after the update, as the official code).

Groups flagged `targets` are the official "density" group (the target linears): there the warmup factor
multiplies N before the step size is applied (W - step_size·(s·N)), elsewhere it is folded into the step size
(W - (step_size·s)·N), as in the official code; the values agree up to rounding, and keeping both orders makes
the two groups match it bit for bit. The official code never decays that group (`p.data[mask].add_` writes
into a copy); the method plugin reproduces that only on request (method.official_target_decay), by giving
the group weight_decay 0.

Not here: sparse momentum (density < 1: moments on a random subset of entries, re-drawn at each reset); every
published pre-training run uses density 1.0. ΔT = 0 (never reset) is an addition: the official code divides
by ΔT. Everything is elementwise, so under FSDP2 each rank steps its own shard (`sharding.local`) and the
moments are sharded with their parameter; the state is two moments and a python int per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..sharding import local
from .paramwise import ParamwiseOptimizer

# The official CosineDecay starts at 0.99: the first update after a reset is scaled by 1 - 0.99 = 0.01.
_WARMUP_START = 0.99


def reset_warmup_scale(k: int, reset_interval: int, reset_warmup: int) -> float:
    """s_k, the multiplier of update k (1-based) after the last momentum reset (module docstring, step 5)."""
    if reset_interval == 0:
        return 1.0
    last_reset = k - k % reset_interval
    j = k - last_reset
    if last_reset == 0 or j >= reset_warmup:
        return 1.0
    # CosineAnnealingLR(T_max = N + 1, eta_min = 0) at epoch j, in its closed form's order of operations.
    return 1 - _WARMUP_START * (1 + math.cos(math.pi * j / (reset_warmup + 1))) / 2


def clips_at(k: int, threshold: float, reset_interval: int, clip_delay: int) -> bool:
    """Whether update k applies the spike-aware clipping (module docstring, step 2)."""
    if threshold <= 0 or k < clip_delay:
        return False
    return reset_interval == 0 or k % reset_interval >= clip_delay


class SPAMAdamW(ParamwiseOptimizer):
    """Adam with SPAM's spike-aware clipping, momentum reset and post-reset warmup (module docstring)."""

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 threshold: float = 5000.0, reset_interval: int = 500, reset_warmup: int = 150,
                 clip_delay: int = 20) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if threshold < 0 or reset_warmup < 0:
            raise ValueError(f"threshold and reset_warmup must be >= 0, got {threshold} and {reset_warmup}")
        if reset_interval == 1 or reset_interval < 0:
            raise ValueError(f"reset_interval must be 0 (never) or >= 2, got {reset_interval}")
        if clip_delay < 2:  # at k = 1, V = 0 and every nonzero gradient entry would be clipped to 0, forever
            raise ValueError(f"clip_delay must be >= 2, got {clip_delay}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "threshold": threshold,
                    "reset_interval": reset_interval, "reset_warmup": reset_warmup, "clip_delay": clip_delay,
                    "targets": False}
        super().__init__(params, defaults)

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        k = state["step"] + 1
        state["step"] = k
        # The rank's own part of everything (the whole tensor without FSDP2): all of SPAM is elementwise.
        grad, exp_avg, exp_avg_sq, weight = local(p.grad), local(state["exp_avg"]), local(state["exp_avg_sq"]), local(p)
        interval, threshold = group["reset_interval"], group["threshold"]
        if interval and k % interval == 0:
            exp_avg.zero_()
            exp_avg_sq.zero_()
        if clips_at(k, threshold, interval, group["clip_delay"]):
            spike = grad.pow(2) > threshold * exp_avg_sq  # against V of the previous update
            grad = torch.where(spike, grad.sign() * torch.sqrt(exp_avg_sq * threshold), grad)
        beta1, beta2 = group["betas"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        # The official order: lr times (sqrt(bc2) / bc1), one python float.
        step_size = group["lr"] * (math.sqrt(1.0 - beta2 ** k) / (1.0 - beta1 ** k))
        scale = reset_warmup_scale(k, interval, group["reset_warmup"])
        direction = exp_avg / denom
        if group["targets"]:
            weight.add_(direction.mul_(scale), alpha=-step_size)
        else:
            weight.add_(direction, alpha=-step_size * scale)
        if group["weight_decay"] > 0:
            weight.add_(weight, alpha=-group["lr"] * group["weight_decay"])
