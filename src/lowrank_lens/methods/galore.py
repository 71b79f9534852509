"""GaLore: full-rank weights, AdamW moments in a rank-r gradient subspace refreshed by SVD every T steps.

docs/methods.md §2 (update rule §2.2, script defaults §2.3, pitfalls §8 item 7); the optimizer is
`optim/galore_adamw.py`. The model is untouched, so the dense W of every target layer is the weight itself
(`dense_weights` keeps the base default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.galore_adamw import GaLoreAdamW
from . import register
from .base import MethodPreset
from .ranks import RankedConfig, RankedMethod, auto_rank
from .shapes import Footprint, model_parameters, param_bytes, target_matrices
from .surgery import split_target_weights

REFERENCE_SCALES = ("60m", "130m", "350m", "1b")
# Rank per scale: the study's scripts (docs/study.md §1.4) for 60m-350m; 1b as in GaLore's Table 2 and
# Fira's scripts (docs/methods.md §2.3, §3.3). CPU scales leave it automatic: hidden // 4 of the final shape,
# the 60m ratio 128 / 512.
_RANKS = {"60m": 128, "130m": 256, "350m": 256, "1b": 512}
# CPU scales run 20 (nano) to 150 (micro) updates; T = 10 refreshes the subspace 2 and 15 times, so the
# refresh path and the moment reuse across subspaces (§2.2 step 6) are exercised, where the reference's
# T = 200 would never refresh. (The 60m recipe refreshes 50 times in 10K steps.)
_CPU_PROJ_GAP = 10


@dataclass
class GaLoreConfig(RankedConfig):
    """The GaLore family's projection settings and their checks: GaLore's, and through subclasses Fira's,
    GoLore's, APOLLO's and APOLLO-Mini's (other defaults, more fields)."""

    rank: int = 128
    """r: rows of Vᵀ (right projector, out >= in) or columns of U (left projector, out < in) kept;
    0 = model.hidden_size // 4 (the 60m ratio), resolved from the final shape."""
    update_proj_gap: int = 200
    """T: the projector is recomputed from the current gradient at steps 0, T, 2T, ... (argparse default
    in the reference is 50; the scripts pass 200)."""
    scale: float = 0.25
    """α (`--galore_scale`): multiplies the back-projected normalised update of the target matrices only."""
    eps: float = 1e-6
    """Adam eps of the GaLore/Fira optimizer for *all* groups (the reference's transformers-style 1e-6);
    optim.eps is not used by this method."""

    scale_meaning: ClassVar[str] = ""
    """What `scale` does, for its error message (APOLLO: the update is multiplied by √scale)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_proj_gap < 1:
            raise LensError(f"method.update_proj_gap must be >= 1, got {self.update_proj_gap}")
        if self.scale <= 0:
            raise LensError(f"method.scale must be positive{self.scale_meaning}, got {self.scale}")
        if self.eps <= 0:  # with 0, a (projected) gradient entry that stays 0 makes its update 0 / 0
            raise LensError(f"method.eps must be positive, got {self.eps}")


def check_gamma(gamma: float) -> None:
    """method.gamma of the norm-growth limiter (optim/limiter.py) of Fira and APOLLO."""
    if not gamma >= 1.0:
        raise LensError(f"method.gamma must be >= 1 (the limiter's allowed growth per step), got {gamma}")


@register
class GaLore(RankedMethod):  # the projector keeps min(r, out, in) singular vectors
    """Full-rank weights; AdamW moments of the target matrices in a rank-r gradient subspace (SVD every T)."""

    name = "galore"
    description = ("Full-rank weights; AdamW moments of the target matrices live in a rank-r gradient subspace "
                   "refreshed by SVD every T steps")
    colour = "#ff7f0e"
    Config = GaLoreConfig
    # The reference optimizer has its own eps (1e-6, transformers-style) for every group.
    unused_fields = {"optim.eps": "method.eps"}
    memory_formula = ("P trainable, full-size gradients; state 2E moments for the non-targets (plain Adam, "
                      "docs/methods.md §2.1) and, per m x n target, two moments of the projected gradient (m x r' if "
                      "m >= n, r' x n otherwise: 2r'·max(m, n)), the projector (r'·min(m, n)) and a 0-dim side "
                      "flag. The step counter is a python int.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        return shared_preset(scale, alpha_1b=0.25, method="GaLore")

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """Plain group: Adam moments of the non-targets. Projected group, per m x n target with r' = min(r, m,
        n): moments r' x max(m, n) each, basis r' x min(m, n), a 0-dim side flag (all in the parameters' dtype;
        the step counter is a python int, not a tensor)."""
        targets = target_matrices(run.model, run.method_cfg.targets, linear_only=False)
        plain = sum(model_parameters(run.model, exclude=tuple(targets)).values())
        r = auto_rank(run.method_cfg.rank, run.model)
        low = sum(min(r, m, n) * max(m, n) for m, n in targets.values())
        projected = {"exp_avg": low, "exp_avg_sq": low,
                     "basis": sum(min(r, m, n) * min(m, n) for m, n in targets.values()), "proj_right": len(targets)}
        projected.update(cls._extra_state(len(targets)))
        state = ({"exp_avg": plain, "exp_avg_sq": plain}, projected)
        return Footprint(trainable=tuple(model_parameters(run.model).values()), state=state,
                         state_bytes=param_bytes(run) * sum(v for g in state for v in g.values()),
                         replicated_state=(1,))  # GaLoreAdamW.replicated_state: the projected group

    @classmethod
    def _extra_state(cls, n_targets: int) -> dict[str, int]:
        """State elements a subclass keeps per projected matrix besides GaLore's (Fira: its residual norm)."""
        return {}

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        return GaLoreAdamW(self.param_groups(model), **self.optimizer_kwargs(optim))

    # ---- shared with Fira -------------------------------------------------------------------------
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """[plain group, projected group]: the target linears' weights are projected; everything else
        trainable (embeddings, norms, lm_head, any bias) is plain AdamW at the same lr (docs/methods.md §2.1)."""
        targets, plain = split_target_weights(model, self.cfg.targets)
        bad = [tuple(p.shape) for p in targets.values() if p.dim() != 2]
        if bad:
            raise LensError(f"method.targets selects non-matrix weights {bad[:3]}; target Linear layers only")
        return [{"params": plain},
                {"params": list(targets.values()), "rank": auto_rank(self.cfg.rank, self.run.model),
                 "update_proj_gap": self.cfg.update_proj_gap,
                 "scale": self.cfg.scale}]

    def optimizer_kwargs(self, optim: OptimConfig) -> dict[str, Any]:
        return {"lr": optim.lr, "betas": (optim.beta1, optim.beta2), "eps": self.cfg.eps,
                "weight_decay": optim.weight_decay}


def shared_preset(scale: str, alpha_1b: float, method: str) -> MethodPreset:
    """Per-scale values shared by GaLore and Fira (they differ only in α at 1b and in the notes)."""
    optim = {"lr": 1e-2, "weight_decay": 0.0}
    if scale in REFERENCE_SCALES:
        params = {"rank": _RANKS[scale], "update_proj_gap": 200, "scale": alpha_1b if scale == "1b" else 0.25}
        notes = [f"{method} {scale}: rank {params['rank']}, lr 1e-2, α {params['scale']}, T 200, wd 0, Adam eps "
                 "1e-6 (docs/study.md §1.4; docs/methods.md §2.3/§3.3; the eps of the reference optimizer)"]
        if scale == "1b":
            notes.append("1b is not in the study; GaLore's script uses rank 1024 at 1b but its Table 2 (and "
                         "Fira's script and table) use 512, which we follow" if method == "GaLore" else
                         "1b is not in the study; Fira's script uses rank 512 and α 0.0625 at 1b")
        return MethodPreset(params=params, optim=optim, notes=notes)
    return MethodPreset(
        params={"rank": 0, "update_proj_gap": _CPU_PROJ_GAP, "scale": 0.25}, optim=optim,
        notes=[f"{method} {scale}: rank = hidden/4 (the 60m ratio 128/512), T {_CPU_PROJ_GAP}, lr 1e-2, α 0.25, "
               f"wd 0, Adam eps 1e-6; T is {_CPU_PROJ_GAP}, not the reference's 200, so the few hundred updates "
               "still refresh the subspace several times"])
