"""GoLoreAdamW: GaLoreAdamW whose late subspace refreshes draw a random basis instead of an SVD (arXiv 2410.11289).

GoLore (He et al., ICML 2025; official code pkumelon/Golore, `peft_pretraining/golore_torch/`) is GaLore with a
second kind of projector. Each projected group carries `random_from` (the official `rand_epoch`, set by the
script to rand_ratio x num_training_steps): a refresh at a per-parameter step s (steps 0, T, 2T, ..., counted
before the increment, as GaLore's) takes

- s <  random_from: GaLore's SVD basis of the current gradient (`GaLoreAdamW._project`, unchanged), or
- s >= random_from: a basis drawn uniformly from the Stiefel manifold, independent of the gradient: the polar
  factor of an i.i.d. N(0, 1) matrix Z of the basis's shape (r x n right, m x r left), Z (ZᵀZ)^(-1/2) as the
  official `get_random_orthogonal_matrix` computes it, here as U·Vᵀ of Z's thin SVD in float64. (The
  official fp32 right-side draw goes through the n x n Gram matrix ZᵀZ of rank r, whose zero eigenvalues add
  noise of about 4e-4 per entry; the polar factor is what it means to compute.)

Projection, Adam, α (`scale`, applied to the back-projected update), weight decay and the side rule are
GaLore's. Z comes from a CPU generator seeded by (group seed, group index, parameter index, step), so every
rank under DDP/FSDP2 and every resumed run draws the same basis without communicating; the official draws
from the global RNG.

First moment at a refresh (`reproject`, optimizer-wide; the second moment is never touched, as in every
official path):

- "random" (default): at random refreshes only, M ← the old subspace's M expressed in the new basis
  (right: (M Q_old) Q_newᵀ; left: P_newᵀ (P_old M)), stored. Before the switch this is GaLore
  exactly. The official MSGD optimizer re-projects at random refreshes only; GaLore keeps M across SVD refreshes.
- "every": the same at every refresh, SVD ones too (the README's ReLoRA-style path, `GoLore.py`).
- "code": the official `golore_torch/adamw.py` as `script/Go_pt.sh` runs it: at every refresh the re-projected
  M is a local copy, so it enters only that step's update; the stored M keeps its old coordinates and skips
  that step's moment update.
- "none": moments are never re-projected (GaLore's rule with GoLore's projector).

Under FSDP2 the basis and the projected moments are replicated, as GaLore's (`replicated_state`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import torch

from .galore_adamw import GaLoreAdamW
from .projector import is_right, needs_refresh, project

REPROJECT_MODES = ("random", "every", "code", "none")


def draw_seed(seed: int, group_index: int, param_index: int, step: int) -> int:
    """The 63-bit generator seed of one random basis: a hash of who draws it and when (not of any RNG state)."""
    parts = repr(("golore", seed, group_index, param_index, step)).encode()
    return int.from_bytes(hashlib.sha256(parts).digest()[:8], "little") >> 1


def random_basis(shape: tuple[int, int], rank: int, right: bool, seed: int, like: torch.Tensor) -> torch.Tensor:
    """A uniformly random orthonormal basis for a gradient of `shape`: r x n rows (right) or m x r columns
    (left), r clipped to min(m, n) as GaLore's slicing clips it, in `like`'s dtype and device.

    Z ~ N(0, 1) in float64 from a CPU generator (so the draw does not depend on the device), then its polar
    factor U·Vᵀ = Z (ZᵀZ)^(-1/2): the unique orthonormal matrix closest to Z, Haar-distributed on the Stiefel
    manifold because Z's law is invariant under rotations on either side.
    """
    m, n = shape
    k = min(rank, m, n)
    z = torch.randn((k, n) if right else (m, k), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u, _, vh = torch.linalg.svd(z.to(like.device), full_matrices=False)
    return (u @ vh).to(like.dtype).contiguous()


def reprojected_moment(moment: torch.Tensor, old: torch.Tensor, new: torch.Tensor, right: bool) -> torch.Tensor:
    """M from the old subspace's coordinates to the new one's, in the official order of the products:
    right (M: m x r, Q: r x n): (M Q_old) Q_newᵀ; left (M: r x n, P: m x r): P_newᵀ (P_old M)."""
    return (moment @ old) @ new.t() if right else new.t() @ (old @ moment)


class GoLoreAdamW(GaLoreAdamW):
    """GaLoreAdamW with random projections from `random_from` on (module docstring).

    Projected groups take, besides GaLore's keys, `random_from` (per-parameter step of the first random
    refresh; default inf: never, i.e. GaLore) and `seed` (of the random draws, default 0).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 reproject: str = "random") -> None:
        if reproject not in REPROJECT_MODES:
            raise ValueError(f"reproject {reproject!r} is not one of {', '.join(REPROJECT_MODES)}")
        self._golore_defaults = {"reproject": reproject}  # read by _extra_defaults during super().__init__
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _extra_defaults(self) -> dict[str, Any]:
        return dict(self._golore_defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "rank" in param_group:
            param_group = {"random_from": math.inf, "seed": 0, **param_group}
            if not param_group["random_from"] >= 0:
                raise ValueError(f"random_from must be >= 0, got {param_group['random_from']}")
        super().add_param_group(param_group)

    def _project(self, state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        old = state.get("basis")
        step, right = state["step"], is_right(grad.shape)
        refresh = needs_refresh(step, group["update_proj_gap"], old is not None)
        drawn = refresh and step >= group["random_from"]
        if drawn:
            seed = draw_seed(group["seed"], *self._position(state), step)
            state["basis"] = random_basis(tuple(grad.shape), group["rank"], right, seed, grad)
            state["proj_right"] = torch.tensor(float(right), dtype=grad.dtype, device=grad.device)
            low = project(grad, state["basis"], right)
        else:
            low = super()._project(state, grad, group)  # GaLore: the SVD refresh when due, then R = project(G)
        mode = group["reproject"]
        if refresh and old is not None and "exp_avg" in state and (mode in ("every", "code") or
                                                                   (mode == "random" and drawn)):
            moved = reprojected_moment(state["exp_avg"], old, state["basis"], right)
            if mode == "code":  # the official local copy: the stored M comes back after this step (_direction)
                state["stale_exp_avg"] = state["exp_avg"]
            state["exp_avg"] = moved
        return low

    def _direction(self, state: dict[str, Any], grad: torch.Tensor, low: torch.Tensor,
                   norm_low: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        # Runs after this step's Adam update, so N already used the re-projected M; "code" then restores the
        # un-updated stored one, and no extra key outlives the step (the footprint is GaLore's).
        if "stale_exp_avg" in state:
            state["exp_avg"] = state.pop("stale_exp_avg")
        return super()._direction(state, grad, low, norm_low, group)

    def _position(self, state: dict[str, Any]) -> tuple[int, int]:
        """(group index, parameter index) of the parameter owning `state`: the stable identity of its draws.
        A scan, run only at random refreshes (every T steps)."""
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if self.state.get(p) is state:
                    return gi, pi
        raise RuntimeError("GoLoreAdamW: a state without its parameter")
