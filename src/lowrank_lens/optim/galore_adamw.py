"""GaLoreAdamW: AdamW whose moments live in a rank-r gradient subspace (docs/methods.md §2.2).

Faithful to the official optimizer (`galore_torch/adamw.py`, `proj_type="std"`), step by step:

1. each parameter keeps `state["step"]` (a python int, starting at 0);
2. projected groups (those with a `rank` key): at steps 0, T, 2T, ... the basis is refreshed from an SVD
   of the current gradient, then R = project(G);
3. Adam on R: moments of R's shape created at first use, M ← β1 M + (1-β1) R, V ← β2 V + (1-β2) R²,
   N = M / (√V + eps), eps default 1e-6 (transformers-style); the step counter is incremented *after*
   the projection, and bias correction is folded into step_size = lr √(1-β2^t) / (1-β1^t);
4. W ← W - step_size · α · project_back(N), α = the group's `scale`;
5. decoupled weight decay afterwards: W ← W - lr · wd · W;
6. moments are never reset, rotated or re-projected when the subspace changes (§2.2 step 6, §8 item 7).

Groups without `rank` get the same AdamW on the full gradient (the reference updates embeddings, norms
and lm_head this way, at the same lr and eps, no α). Floating-point operations follow the reference's
order and memory layout, so the two agree bitwise on CPU in fp32 and bf16 (tests/methods/test_galore_fira.py).

State per projected parameter: step (int), exp_avg and exp_avg_sq (R's shape: m x r or r x n),
basis (Q: r x n or P: m x r) and proj_right (0-dim, 1.0 for the right projector). Only tensors and
python numbers, so `state_dict()` survives `torch.load(weights_only=True)` and resumes bitwise.

Subclasses change the full-size update by overriding `_direction` (Fira, fira_adamw.py).

Sharded parameters (FSDP2, train.parallel=fsdp): the projection needs the whole gradient (the refresh's SVD
reads all of it, and a left projection Pᵀ·G sums over its rows), so each rank gathers the full gradient of
one matrix, computes the projected Adam step exactly as one process does, and applies the rows of the
update it holds. The projected moments and the basis are small (r x n or m x r) and stay replicated, the
same on every rank (`replicated_state`); the gradient is whole only for the matrix being stepped.
Unprojected groups step on their shards directly (elementwise AdamW).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..sharding import full, local, local_part
from .paramwise import closure_loss
from .projector import is_right, needs_refresh, orthogonal_basis, project, project_back

# Keys of a projected param group and their defaults (those of the reference projector class;
# the presets always pass the script values, docs/methods.md §2.3).
PROJECTION_DEFAULTS: dict[str, Any] = {"update_proj_gap": 200, "scale": 1.0}


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore projection for param groups that carry `rank` (docs/methods.md §2.2).

    A projected group is a dict with `params` (2-D weights, torch layout out x in), `rank`, and optionally
    `update_proj_gap` (T, default 200) and `scale` (α, default 1.0). `proj_type` is accepted for drop-in
    compatibility with reference param groups, but only "std" exists here.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, {**defaults, **self._extra_defaults()})

    def _extra_defaults(self) -> dict[str, Any]:
        """Optimizer-wide settings a subclass adds to every group (so they travel in state_dict())."""
        return {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate projected groups before torch fills in the optimizer-wide defaults."""
        if "rank" in param_group:
            group = dict(param_group)
            for key, value in PROJECTION_DEFAULTS.items():
                group.setdefault(key, value)
            proj_type = group.pop("proj_type", "std")
            if proj_type != "std":
                raise ValueError(f"proj_type {proj_type!r} is not supported; only 'std' (docs/methods.md §2.2)")
            if int(group["rank"]) < 1 or int(group["update_proj_gap"]) < 1:
                raise ValueError(f"rank and update_proj_gap must be >= 1, got {group['rank']} and "
                                 f"{group['update_proj_gap']}")
            params = group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            bad = [tuple(p.shape) for p in params if p.dim() != 2]
            if bad:
                raise ValueError(f"projected parameters must be 2-D matrices, got shapes {bad[:3]}")
            group["params"] = params
            param_group = group
        super().add_param_group(param_group)

    # ---- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for group in self.param_groups:
            projected = "rank" in group
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GaLoreAdamW does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                target = p
                if projected:
                    grad = full(p.grad)  # G: m x n (gathered when sharded)
                    low = self._project(state, grad, group)  # R: m x r (right) or r x n (left)
                    norm_low, step_size = self._adam(state, low, group)  # N: R's shape
                    update = local_part(self._direction(state, grad, low, norm_low, group), p)  # m x n, my rows
                    target = local(p)
                else:
                    update, step_size = self._adam(state, p.grad, group)
                target.add_(update, alpha=-step_size)
                # Decoupled weight decay after the update, with the undecorated lr (§2.2 step 5).
                if group["weight_decay"] > 0.0:
                    target.add_(target, alpha=-group["lr"] * group["weight_decay"])
        return loss

    @staticmethod
    def replicated_state(group: dict[str, Any]) -> bool:
        """Whether a group's state is whole on every rank under FSDP2 (projected groups), not sharded."""
        return "rank" in group

    # ---- pieces shared with Fira ------------------------------------------------------------------
    def _project(self, state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Refresh the basis when due (uses the counter *before* this step's increment), then project."""
        right = is_right(grad.shape)
        if needs_refresh(state["step"], group["update_proj_gap"], "basis" in state):
            state["basis"] = orthogonal_basis(grad, group["rank"], right, state.get("basis"))
            # 1.0 = right (Q, r x n), 0.0 = left (P, m x r). Recorded for readers of the state; the step
            # re-derives the side from the shape, which is equivalent and never reads a device tensor
            # back to the host. Kept in the parameter's dtype and device because load_state_dict casts
            # every state tensor of a floating parameter to those, so save -> load is a fixed point.
            state["proj_right"] = torch.tensor(float(right), dtype=grad.dtype, device=grad.device)
        return project(grad, state["basis"], right)

    @staticmethod
    def _adam(state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]) -> tuple[torch.Tensor, float]:
        """Moment update on `grad` (projected or not). Returns the bias-uncorrected N = M / (√V + eps)
        and the step size with the bias correction folded in (docs/methods.md §2.2 step 3)."""
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        state["step"] += 1
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
        return exp_avg / denom, step_size

    def _direction(self, state: dict[str, Any], grad: torch.Tensor, low: torch.Tensor,
                   norm_low: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """GaLore: α · project_back(N), m x n. α scales the normalised update, not the gradient (§8 item 7)."""
        return self._back(state, norm_low, grad).mul_(group["scale"])

    @staticmethod
    def _back(state: dict[str, Any], low: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """project_back without α, on the side fixed by the full gradient's shape."""
        return project_back(low, state["basis"], is_right(grad.shape))
