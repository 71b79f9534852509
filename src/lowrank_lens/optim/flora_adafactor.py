"""FloraAdafactor: Adafactor whose momentum of the target matrices is kept in a random low-rank projection (Flora,
arXiv 2402.03293, ICML 2024). The official optimizer is `flora_opt/optimizers/torch/flora.py` (PyPI flora-opt 0.0.3,
BorealisAI/flora-opt); tests/methods/test_flora.py checks this one against it bit for bit.

Flora is Adafactor (Shazeer & Stern 2018) plus compressed momentum. Per parameter W with gradient G, update t
(1-based), everything in fp32 (bf16 gradients and weights are upcast, the weight is written back rounded):

1. step size lr_t = lr · max(eps_scale, RMS(W)) (`scale_parameter`, Adafactor's relative step; else lr);
2. ρ_t = 1 - t^(-c), c = decay_rate (0.8); X = G² + eps;
3. second moment: a matrix keeps row and column means, R ← ρR + (1-ρ)·mean_j X, C ← ρC + (1-ρ)·mean_i X and
   U = G / sqrt(R C / mean(R)); a vector keeps V ← ρV + (1-ρ)X and U = G / sqrt(V);
4. momentum (β1 > 0) of the *normalised* U, Adafactor's order:
   - plain groups: M ← β1·M + (1-β1)·U and U ← M (M of W's shape);
   - groups with `rank` r (m x n matrices with min(m, n) >= r and max/min <= 4, the official eligibility):
     M is r x n when m < n (left projection L: r x m) and m x r otherwise (right projection P: n x r), with
     entries N(0, 1/r) drawn from a seed s on the weight's device, never stored:
       U' = (1-β1)·U + β1·up_s(M)               (the current U enters uncompressed)
       every κ updates (t % κ == 0): s' = next(s), M ← down_s'(up_s(M)), s ← s'   (moment transfer)
       M ← β1·M + (1-β1)·down_s(U), then U ← U'
     where down(X) = L X or X P and up(M) = Lᵀ M or M Pᵀ;
5. update clipping U ← U / max(1, RMS(U) / clip_threshold);
6. W ← W - lr_t·wd·W, then W ← W - lr_t·U (the decay uses the parameter-scaled step size, before the update).

Seeds as in the official code: parameter i (1-based over all groups) starts at `seed + i`; next(s) is the last
of 15 int64 draws of a CPU generator seeded with s, and the left/right projections use the two int64 draws
of split(s). A projection is drawn once per seed and update (the official code redraws the same numbers).

Differences from the official code (none changes a number in the tests): max(eps_scale, RMS) is a clamp on the
device (no host sync per parameter; when RMS(W) <= eps_scale the step size may differ in the last bit);
quantization of the states (bitsandbytes) is not offered; the second moment is always factored for matrices.

State per parameter, fp32 whatever the parameter's dtype (the official dtype): `step` and `seed` (python ints),
`RMS` (0-dim), `exp_avg_sq_row` / `exp_avg_sq_col` (matrices) or `exp_avg_sq` (vectors), `exp_avg`. Torch's
load_state_dict casts floating state to the parameter's dtype; `load_state_dict` here restores fp32.

Sharded parameters (FSDP2): every quantity but the elementwise ones needs the whole matrix (RMS, column means,
the projections), so each rank gathers the full gradient and weight of one parameter, steps it exactly as one
process does and keeps the rows it holds (as GaLoreAdamW). State of the parameter's shape in plain groups
(the full-size momentum, a vector's second moment) stays sharded like it and is gathered for the step; all
other state (factored second moments, compressed momenta, RMS) is small and replicated, and the groups with
`rank` keep all of theirs replicated (`replicated_state`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..sharding import full, is_sharded, local, set_full_
from .paramwise import ParamwiseOptimizer

_LOW = (torch.float16, torch.bfloat16)
_INT64_MAX = torch.iinfo(torch.int64).max


def _int64_draws(seed: int, n: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, _INT64_MAX, (n,), generator=gen).tolist()


def next_seed(seed: int) -> int:
    """The seed of the next projection (the official `next_seed`: the last of 15 draws)."""
    return _int64_draws(seed, 15)[-1]


def projection(seed: int, rank: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """L (r x m) for a wide m x n matrix (m < n), else P (n x r); entries N(0, 1) / sqrt(r), fp32, on `device`."""
    left_seed, right_seed = _int64_draws(seed, 2)
    m, n = shape
    size, seed_ = ((rank, m), left_seed) if m < n else ((n, rank), right_seed)
    if device.type == "meta":  # memory accounting on the meta device: shapes only
        return torch.empty(size, device=device)
    gen = torch.Generator(device=device).manual_seed(seed_)
    return torch.randn(size, generator=gen, device=device, dtype=torch.float32) / math.sqrt(rank)


def down(proj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """m x n -> r x n (L X) or m x r (X P)."""
    return proj @ x if x.shape[0] < x.shape[-1] else x @ proj


def up(proj: torch.Tensor, low: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """r x n -> m x n (Lᵀ M) or m x r -> m x n (M Pᵀ)."""
    return proj.t() @ low if shape[0] < shape[-1] else low @ proj.t()


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.norm(2) / (x.numel() ** 0.5)


class FloraAdafactor(ParamwiseOptimizer):
    """Adafactor with Flora's compressed momentum for param groups that carry `rank` (module docstring).

    Group keys: lr, betas = (β1, decay_rate c > 0: ρ_t = 1 - t^-c), eps (added to G²), eps_scale (floor of RMS(W)),
    clip_threshold, scale_parameter, weight_decay; projected groups add `rank` and `kappa` (κ).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.8), eps: float = 1e-30, eps_scale: float = 1e-3,
                 clip_threshold: float = 1.0, scale_parameter: bool = True, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        if lr < 0.0 or weight_decay < 0.0 or eps < 0.0 or eps_scale < 0.0:
            raise ValueError(f"lr, weight_decay, eps, eps_scale must be >= 0, got {lr}, {weight_decay}, {eps}, "
                             f"{eps_scale}")
        if not (0.0 <= betas[0] < 1.0 and betas[1] > 0.0) or clip_threshold <= 0:
            raise ValueError(f"need 0 <= beta1 < 1, decay_rate > 0, clip_threshold > 0; got {betas}, {clip_threshold}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "eps_scale": eps_scale, "clip_threshold": clip_threshold,
                    "scale_parameter": scale_parameter, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        for i, p in enumerate((p for g in self.param_groups for p in g["params"]), start=1):
            self.state[p]["seed"] = seed + i  # the official numbering, over every parameter of every group

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "rank" in param_group:
            param_group = {"kappa": 1000, **param_group}
            if int(param_group["rank"]) < 1 or int(param_group["kappa"]) < 1:
                raise ValueError(f"rank and kappa must be >= 1, got {param_group['rank']}, {param_group['kappa']}")
        super().add_param_group(param_group)

    @staticmethod
    def replicated_state(group: dict[str, Any]) -> bool:
        """Whether a group's state is whole on every rank under FSDP2 (projected groups), not sharded."""
        return "rank" in group

    @staticmethod
    def compressed(group: dict[str, Any], shape: tuple[int, ...]) -> bool:
        """Whether a parameter's momentum is projected: the official `factored_momentum` rule."""
        if "rank" not in group or group["betas"][0] <= 0 or len(shape) != 2:
            return False
        return min(shape) >= group["rank"] and max(shape) / min(shape) <= 4  # "rule out embeddings"

    def _zeros(self, p: torch.Tensor, shape: tuple[int, ...], group: dict[str, Any]) -> torch.Tensor:
        """fp32 zeros; of the parameter's shape and sharding in plain groups, else whole on every rank."""
        if tuple(shape) == tuple(p.shape) and not self.replicated_state(group):
            return torch.zeros_like(p, dtype=torch.float32)
        return torch.zeros(shape, dtype=torch.float32, device=local(p).device)

    def _init_state(self, state: dict[str, Any], p: torch.Tensor, group: dict[str, Any]) -> None:
        m, shape = p.shape[0], tuple(p.shape)
        state["step"] = 0
        if group["betas"][0] > 0:
            if self.compressed(group, shape):
                shape_m = (group["rank"], shape[1]) if m < shape[1] else (m, group["rank"])
                state["exp_avg"] = self._zeros(p, shape_m, group)
            else:
                state["exp_avg"] = self._zeros(p, shape, group)
        if len(shape) == 2:
            state["exp_avg_sq_row"] = self._zeros(p, shape[:1], group)
            state["exp_avg_sq_col"] = self._zeros(p, shape[1:], group)
        else:
            state["exp_avg_sq"] = self._zeros(p, shape, group)

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = full(p.grad)  # gathered when sharded
        grad = grad.float() if grad.dtype in _LOW else grad
        whole = full(p)
        weight = whole.float() if whole.dtype in _LOW else whole  # p itself when fp32 and unsharded
        state = self.state[p]
        if "step" not in state:
            self._init_state(state, p, group)
        state["step"] += 1
        t = state["step"]
        state["RMS"] = _rms(weight)
        lr = group["lr"]
        if group["scale_parameter"]:
            lr = torch.clamp(state["RMS"], min=group["eps_scale"]) * lr
        beta1, decay_rate = group["betas"]
        rho = 1.0 - math.pow(t, -decay_rate)
        update = self._normalised(state, grad, rho, group)
        if beta1 > 0:
            update = self._momentum(state, update, group) if self.compressed(group, tuple(grad.shape)) \
                else self._plain_momentum(state, update, beta1)
        update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
        update.mul_(lr)
        if group["weight_decay"] != 0:
            weight.add_(weight, alpha=-group["weight_decay"] * lr)
        weight.add_(-update)
        if weight is not p:
            set_full_(p, weight)  # the rows this rank holds, rounded to p's dtype

    @staticmethod
    def _normalised(state: dict[str, Any], grad: torch.Tensor, rho: float, group: dict[str, Any]) -> torch.Tensor:
        """Adafactor's U = G / sqrt(V̂) (module docstring, step 3)."""
        update = (grad**2) + group["eps"]
        if grad.dim() == 2:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(rho).add_(update.mean(dim=-1), alpha=1.0 - rho)
            col.mul_(rho).add_(update.mean(dim=-2), alpha=1.0 - rho)
            row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
            return torch.mul(row_factor, col.unsqueeze(-2).rsqrt()).mul_(grad)
        exp_avg_sq = full(state["exp_avg_sq"])
        exp_avg_sq.mul_(rho).add_(update, alpha=1.0 - rho)
        if is_sharded(state["exp_avg_sq"]):
            set_full_(state["exp_avg_sq"], exp_avg_sq)
        return exp_avg_sq.rsqrt().mul_(grad)

    @staticmethod
    def _plain_momentum(state: dict[str, Any], update: torch.Tensor, beta1: float) -> torch.Tensor:
        exp_avg = full(state["exp_avg"])
        update = update * (1 - beta1) + exp_avg * beta1
        if is_sharded(state["exp_avg"]):
            set_full_(state["exp_avg"], update)
        else:
            exp_avg.copy_(update)
        return update

    @staticmethod
    def _momentum(state: dict[str, Any], update: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Flora's compressed momentum (module docstring, step 4); M is replicated, U is m x n."""
        beta1, rank, shape = group["betas"][0], group["rank"], tuple(update.shape)
        proj = projection(state["seed"], rank, shape, update.device)
        raw = update.clone()
        update.copy_(update * (1 - beta1) + up(proj, state["exp_avg"], shape) * beta1)
        if state["step"] % group["kappa"] == 0:  # resample, carrying M over to the new subspace
            new_seed = next_seed(state["seed"])
            new_proj = projection(new_seed, rank, shape, update.device)
            state["exp_avg"].copy_(down(new_proj, up(proj, state["exp_avg"], shape)))
            state["seed"], proj = new_seed, new_proj
        state["exp_avg"].copy_(state["exp_avg"] * beta1 + down(proj, raw) * (1 - beta1))
        return update

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Torch casts floating state to the parameter's dtype (bf16 under pure bf16); Flora's state is fp32, so
        the saved dtype is restored. (Sharded state arrives already cast by the FSDP2 loader.)"""
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for index, saved in state_dict["state"].items():
            state = self.state[params[int(index)]]
            for key, value in saved.items():
                if torch.is_tensor(value) and not is_sharded(value) and value.dtype != state[key].dtype:
                    state[key] = value.to(device=state[key].device, copy=True)
