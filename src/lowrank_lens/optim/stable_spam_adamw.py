"""StableSPAMAdamW: Adam on gradients that are first spike-clipped against a moving max and then rescaled to a
moving average of their own norm, with periodic momentum reset (Stable-SPAM, arXiv 2502.17055).

The official optimizer is `galore_torch/stablespam.py` of TianjinYellow/StableSPAM at 6a66da1 (2025-03-29; not on
PyPI). Per parameter tensor, with t the number of this update (1-based, the official optimizer-wide
`total_steps`, never reset), k the count of updates since the last momentum reset (the official
`state['step']`), lr the scheduled learning rate, β1, β2, eps, γ1, γ2, γ3 (the paper's θ), ΔT (reset interval,
the official `update_proj_gap`), T_d (the official `total_T`) and η (its `eta_min`):

0. s_t = η + (1 - η)·(1 + cos(π t / (T_d + 1))) / 2, the official CosineDecay(1.0, T_d, eta_min=η) read from
   torch's CosineAnnealingLR closed form: it takes β1 and γ1 from their values down to η times them over the
   run (s ≡ 1 for T_d = 0 or η = 1; past T_d + 1 the cosine rises again, as upstream);
1. decoupled weight decay first: W ← W·(1 - lr·wd);
2. AdaClip: k ← k + 1; a = max|G| over the whole tensor; A ← γ3·A + (1-γ3)·a; Â = A / (1 - γ3^k); entries with
   |G| > Â become G / a · Â (scaled by Â/a, sign kept: the largest lands on the threshold);
3. AdaGN: n = ‖G‖ (of the clipped G, the whole tensor); with γ = γ1·s_t, μ ← γ·μ + (1-γ)·n,
   ν ← γ2·ν + (1-γ2)·n²; μ̂ = μ / (1 - γ^k), ν̂ = ν / (1 - γ2^k); G ← G / n · μ̂ / (√ν̂ + eps) when n > 0;
4. momentum reset when ΔT > 0 and t % ΔT == 0: M ← 0, V ← 0 and k ← 1 (only the Adam moments: A, μ and ν
   are kept, yet their bias corrections use the restarted k too, as upstream);
5. Adam with β = β1·s_t: M ← β·M + (1-β)·G, V ← β2·V + (1-β2)·G²,
   W ← W - lr / (1 - β^k) · M / (√V / √(1 - β2^k) + eps).

Quirks of the official code, and what is done with them:

- the reset (`official_reset`): upstream stores fresh zero moments in the state *after* it has taken the old ones
  into local variables, so the update at the reset still runs on the old moments (with the restarted k = 1,
  i.e. bias corrections 1-β and 1-β2 on converged moments: about 0.3x a normal step), and the zeroed moments
  only start at the next update, with k = 2. By default the moments are zeroed before the update that resets
  (step 4 above, what its `state['step'] = 1` means: Adam restarts at this update); the group flag
  `official_reset` reproduces upstream (the moments are zeroed after the update).
- reproduced as upstream: the restarted k in the bias corrections of A, μ and ν (their EMAs are not reset, so
  Â and ν̂ are inflated by up to 1/(1-γ^k) after each reset, which mutes AdaClip for a while); the cosine
  factor on β1 and γ1 (not in the paper's rule; the README recommends it for LLM training); A, μ and ν kept as 0-dim
  tensors in the gradient's dtype (under pure bf16 a 0.999 decay rounds back to the same bf16 number, so the
  EMAs are coarse there); weight decay before the update; one group for every parameter.
- not reproduced, without effect on the weights: upstream writes the clipped entries into `p.grad` itself.

State per parameter: `exp_avg`, `exp_avg_sq` (the parameter's shape and dtype, sharded with it under FSDP2),
`clip_max`, `norm_avg`, `norm_sq_avg` (A, μ, ν: 0-dim, the parameter's dtype, whole on every rank), and the
counters `step` (k) and `update` (t) as python ints, so the state round-trips through state_dict. Under FSDP2
AdaClip and AdaGN run on the whole gradient, gathered one tensor at a time (`sharding.full`), exactly as one
process computes them: a sharded norm would round differently, and AdaClip's jump at the threshold (an entry
just above it is scaled by Â/a) turns such last-bit differences into visible ones. Adam's part is elementwise on
the rank's shard. No branch reads a tensor's value (meta-device safe).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..sharding import full, local, local_part
from .paramwise import ParamwiseOptimizer

_SCALARS = ("clip_max", "norm_avg", "norm_sq_avg")


def momentum_scale(t: int, decay_steps: int, floor: float) -> float:
    """s_t, the factor on β1 and γ1 at update t (module docstring, step 0)."""
    if decay_steps == 0:
        return 1.0
    # CosineAnnealingLR(base 1.0, T_max = T_d + 1, eta_min = η) at epoch t, in its closed form's order of operations.
    return floor + (1.0 - floor) * (1 + math.cos(math.pi * t / (decay_steps + 1))) / 2


def resets_at(t: int, reset_interval: int) -> bool:
    """Whether update t resets the Adam moments (module docstring, step 4)."""
    return reset_interval > 0 and t % reset_interval == 0


class StableSPAMAdamW(ParamwiseOptimizer):
    """Adam with Stable-SPAM's AdaClip, AdaGN and momentum reset (module docstring)."""

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 gamma1: float = 0.85, gamma2: float = 0.99999, gamma3: float = 0.999, reset_interval: int = 1000,
                 decay_steps: int = 0, decay_floor: float = 0.5, official_reset: bool = False) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        for name, value in (("beta1", betas[0]), ("beta2", betas[1]), ("gamma1", gamma1), ("gamma2", gamma2),
                            ("gamma3", gamma3)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value}")
        if reset_interval < 0 or decay_steps < 0:
            raise ValueError(f"reset_interval and decay_steps must be >= 0, got {reset_interval}, {decay_steps}")
        if not 0.0 <= decay_floor <= 1.0:
            raise ValueError(f"decay_floor must lie in [0, 1], got {decay_floor}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "gamma1": gamma1,
                    "gamma2": gamma2, "gamma3": gamma3, "reset_interval": reset_interval, "decay_steps": decay_steps,
                    "decay_floor": decay_floor, "official_reset": official_reset}
        super().__init__(params, defaults)

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if "step" not in state:
            state.update(step=0, update=0, exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                         exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
            for key in _SCALARS:  # plain 0-dim tensors, the same on every rank
                state[key] = torch.zeros((), dtype=p.dtype, device=p.device)
        return state

    def _stabilised_gradient(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], k: int,
                             s: float) -> torch.Tensor:
        """AdaClip then AdaGN (module docstring, steps 2-3): the gradient Adam sees, the rank's own part."""
        grad = full(p.grad)  # the whole tensor under FSDP2 (gathered), so every rank computes what one process does
        gamma1, gamma2, gamma3 = group["gamma1"], group["gamma2"], group["gamma3"]
        peak = torch.linalg.vector_norm(grad, ord=math.inf)
        state["clip_max"] = clip_max = gamma3 * state["clip_max"] + (1 - gamma3) * peak
        threshold = clip_max / (1 - gamma3**k)
        clipped = torch.where(grad.abs() > threshold, grad / peak * threshold, grad)
        norm = torch.linalg.vector_norm(clipped)
        gamma = gamma1 * s
        state["norm_avg"] = norm_avg = gamma * state["norm_avg"] + (1 - gamma) * norm
        state["norm_sq_avg"] = norm_sq_avg = gamma2 * state["norm_sq_avg"] + (1 - gamma2) * norm**2
        target = (norm_avg / (1 - gamma**k)) / (torch.sqrt(norm_sq_avg / (1 - gamma2**k)) + group["eps"])
        # G / n · target where n > 0; a zero gradient stays zero (dividing it by 1 instead of 0).
        divisor = torch.where(norm > 0, norm, torch.ones_like(norm))
        return local_part(clipped / divisor * target, p)

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self._init_state(p)
        weight, exp_avg, exp_avg_sq = local(p), local(state["exp_avg"]), local(state["exp_avg_sq"])
        lr, eps = group["lr"], group["eps"]
        if group["weight_decay"] > 0:
            weight.mul_(1 - lr * group["weight_decay"])
        t = state["update"] = state["update"] + 1
        k = state["step"] + 1
        s = momentum_scale(t, group["decay_steps"], group["decay_floor"])
        grad = self._stabilised_gradient(p, state, group, k, s)
        reset = resets_at(t, group["reset_interval"])
        if reset:
            k = 1
            if not group["official_reset"]:
                exp_avg.zero_()
                exp_avg_sq.zero_()
        state["step"] = k
        beta1, beta2 = group["betas"]
        beta1 = beta1 * s
        bias_correction1, bias_correction2 = 1 - beta1**k, 1 - beta2**k
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        weight.add_(exp_avg / denom, alpha=-(lr / bias_correction1))
        if reset and group["official_reset"]:  # upstream's fresh moments take effect from the next update
            exp_avg.zero_()
            exp_avg_sq.zero_()
