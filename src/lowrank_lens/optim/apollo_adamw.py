"""ApolloAdamW: AdamW whose element-wise step size is coarsened to channel- or tensor-wise scaling factors,
estimated in a random rank-r subspace (APOLLO, arXiv 2412.05270, Algorithm 1; official `apollo_torch/apollo.py`,
PyPI `apollo-torch` 1.0.3).

Per projected weight W (torch layout m x n) with gradient G (m x n), at every step t:

1. refresh (steps 0, T, 2T, ... of the per-parameter counter, as GaLore's `needs_refresh`): draw a Gaussian
   projection with entries N(0, 1/r) from the parameter's seed chain, then advance the chain (`next_seed`).
   m >= n: right projection P (r x n), R = G Pᵀ (m x r); m < n: left projection P (m x r), R = Pᵀ G (r x n).
   The moments stay across refreshes, as in the official code.
2. Adam on R (eps 1e-6, transformers-style): N = M / (√V + eps), bias correction folded into the step size,
   exactly GaLoreAdamW's `_adam`.
3. scaling factor s = ‖N‖ / (‖R‖ + 1e-8): per channel (`scale_type="channel"`, reduced over the rank
   dimension: one factor per row of G for the right projection, per column for the left; APOLLO) or one for
   the tensor (`"tensor"`; APOLLO-Mini).
4. the update is the *full* gradient scaled, U = G ⊙ s (G's direction is kept, no project-back), then
   multiplied by √scale (the official `np.sqrt(group["scale"])`: the paper's α is √scale, so the scripts'
   `--apollo_scale 128` is α = √128) and passed through Fira's norm-growth limiter (γ = 1.01: ‖U‖ may grow by at
   most γ per step relative to the previous limited norm; the first step only records it). `scale_front`
   multiplies by √scale before the limiter instead of after it (the official `--scale_front`).
5. W ← W - step_size · U, then decoupled weight decay with the undecorated lr.

Seeding (`seeding`): the official optimizer seeds parameter k (1-based over all params of all groups at
construction) with k, and draws with a generator on the gradient's device, so a CUDA run draws other numbers
than a CPU run (Philox vs Mersenne Twister) and train.seed changes nothing. "official" reproduces that exactly;
"stable" (the default, docs/design.md convention 7) draws every projection with a CPU generator and moves it to
the device, and takes the chain's first seed from the group's `seeds` (one per parameter; the plugins pass
stable_seed(train.seed, layer name)), else from the official index. On CPU both modes draw the same numbers
from the same seed, which is how the reference test compares the optimizers bitwise.

State per projected parameter: step and seed (python ints: the next seed of the chain), exp_avg and exp_avg_sq
(R's shape), basis (P) and update_norm (0-dim, the limiter's previous norm; absent with `limiter=False`), all in
the parameter's dtype. Under FSDP2 the gradient is gathered whole and the state is replicated, as GaLoreAdamW's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from .galore_adamw import GaLoreAdamW
from .limiter import check_gamma, limit_norm_growth
from .projector import is_right, needs_refresh, project

SCALE_TYPES = ("channel", "tensor")
SEEDINGS = ("stable", "official")
# The official random_projector.ADV_DEFAULT: next_seed draws this many int64s and keeps the last one.
_SEED_ADVANCE = 0xF
# Hard-coded in the official step (step 3; the limiter's own, step 4, is in limiter.py).
_FACTOR_EPS = 1e-8


def next_seed(seed: int) -> int:
    """The next seed of a parameter's chain: the last of 15 int64 draws of a CPU generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, torch.iinfo(torch.int64).max, (_SEED_ADVANCE,), generator=gen)[-1])


def random_projection(shape: tuple[int, int], rank: int, right: bool, seed: int, device: torch.device,
                      dtype: torch.dtype, on_device: bool) -> torch.Tensor:
    """P with entries N(0, 1/r), drawn in fp32 and cast to `dtype`: r x n if `right`, else m x r, for a gradient
    of `shape` (m, n). `on_device`: the generator lives on `device` (the official draw, device-dependent), else
    on the CPU (the same numbers everywhere)."""
    m, n = shape
    draw_on = device if on_device and device.type != "meta" else torch.device("cpu")  # meta has no generator
    gen = torch.Generator(device=draw_on).manual_seed(seed)
    p = torch.randn((rank, n) if right else (m, rank), generator=gen, device=draw_on, dtype=torch.float32)
    return p.div_(math.sqrt(rank)).to(device=device, dtype=dtype)


def scaling_factor(norm_low: torch.Tensor, low: torch.Tensor, right: bool, tensor_wise: bool) -> torch.Tensor:
    """‖N‖ / (‖R‖ + 1e-8): 0-dim (tensor-wise), else per channel, reduced over the rank dimension: m x 1 for a
    right projection (R, N: m x r), 1 x n for a left one (r x n)."""
    if tensor_wise:
        return torch.linalg.vector_norm(norm_low) / (torch.linalg.vector_norm(low) + _FACTOR_EPS)
    dim = 1 if right else 0
    num = torch.linalg.vector_norm(norm_low, dim=dim, keepdim=True)
    return num / (torch.linalg.vector_norm(low, dim=dim, keepdim=True) + _FACTOR_EPS)


class ApolloAdamW(GaLoreAdamW):
    """GaLoreAdamW's step with APOLLO's random projection and gradient scaling for groups that carry `rank`.

    A projected group has `params` (2-D weights), `rank`, and optionally `update_proj_gap` (T, default 200),
    `scale` (default 1; the update is multiplied by √scale), `scale_type` ("channel" or "tensor", default
    "channel") and `seeds` (the first seed of each parameter's chain; default: the official 1-based index).
    The official group keys `proj` ("random" only) and `proj_type` ("std" only) are accepted.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 scale_front: bool = False, limiter: bool = True, gamma: float = 1.01,
                 seeding: str = "stable") -> None:
        self._apollo_defaults = {"scale_front": scale_front, "limiter": limiter, "gamma": gamma,
                                 "seeding": seeding}  # read by _extra_defaults during super().__init__
        self._params_seen = 0  # the official seed of a parameter is its 1-based position over all groups
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _extra_defaults(self) -> dict[str, Any]:
        return dict(self._apollo_defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        first = self._params_seen + 1
        self._params_seen += len(group["params"])
        if "rank" in group:
            proj = group.pop("proj", "random")
            if proj != "random":
                raise ValueError(f"proj {proj!r} is not supported; only 'random' (the SVD projector is GaLore's)")
            group.setdefault("scale_type", "channel")
            if group["scale_type"] not in SCALE_TYPES:
                raise ValueError(f"scale_type {group['scale_type']!r} is not one of {', '.join(SCALE_TYPES)}")
            group.setdefault("seeds", list(range(first, first + len(group["params"]))))
            group["seeds"] = [int(s) for s in group["seeds"]]
            if len(group["seeds"]) != len(group["params"]):
                raise ValueError(f"seeds has {len(group['seeds'])} entries for {len(group['params'])} params")
        super().add_param_group(group)
        group = self.param_groups[-1]  # torch has filled in the optimizer-wide settings by now
        if group["seeding"] not in SEEDINGS:
            raise ValueError(f"seeding {group['seeding']!r} is not one of {', '.join(SEEDINGS)}")
        check_gamma(group["gamma"])
        if "rank" in group and group["scale"] <= 0:
            raise ValueError(f"scale must be positive (the update is multiplied by its square root), got "
                             f"{group['scale']}")

    def _project(self, state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Redraw P when due (the counter before this step's increment), advance the seed chain, project."""
        right = is_right(grad.shape)
        if needs_refresh(state["step"], group["update_proj_gap"], "basis" in state):
            if "seed" not in state:
                state["seed"] = group["seeds"][self._index(group, state)]
            state["basis"] = random_projection(tuple(grad.shape), int(group["rank"]), right, state["seed"],
                                               grad.device, grad.dtype, group["seeding"] == "official")
            state["seed"] = next_seed(state["seed"])
        return project(grad, state["basis"], right)

    def _index(self, group: dict[str, Any], state: dict[str, Any]) -> int:
        """Position in its group of the parameter whose state this is (state dicts are per parameter)."""
        return next(i for i, p in enumerate(group["params"]) if p in self.state and self.state[p] is state)

    def _direction(self, state: dict[str, Any], grad: torch.Tensor, low: torch.Tensor,
                   norm_low: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """U = √scale · limit(G ⊙ s) (or limit(√scale · G ⊙ s) with scale_front), m x n."""
        factor = scaling_factor(norm_low, low, is_right(grad.shape), group["scale_type"] == "tensor")
        update = grad * factor  # the full gradient keeps its direction; only its channels are rescaled
        root = math.sqrt(group["scale"])
        if group["scale_front"]:
            update.mul_(root)
        if group["limiter"]:
            update = limit_norm_growth(state, update, group["gamma"], "update_norm")
        if not group["scale_front"]:
            update.mul_(root)
        return update
