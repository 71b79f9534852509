"""SUMO: full-rank weights; the target matrices keep one moment in a rank-r gradient subspace (SVD every K updates),
orthogonalised exactly by an SVD (Refael, Smorodinsky, Tirer & Lindenbaum, NeurIPS 2025, arXiv 2505.24749;
docs/methods.md §21). AdamW trains the embeddings, the LM head and the norms.

No official code was found: the paper's link (github.com/guy120494/SUMO) has no snapshot here and no copy of its
code was located, only third-party re-implementations (not followed). The update is re-derived from the paper's
Algorithm 1 and §3.2 (optim/sumo.py says how, and which readings were chosen where the paper is silent). As in
GaLore's recipe, which SUMO's Table 3 follows, the target linears are SUMO's and every other parameter AdamW's
at the same lr, in one optimizer (optim/aux_adamw.py). The model is untouched, so the dense view is the weight.

`method.rank` is r as for GaLore (0 = hidden/4 from the final shape); each matrix uses r' = min(r, m, n).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.sumo import SUMOAdamW
from . import register
from .base import MethodPreset
from .ranks import RankedConfig, RankedMethod, auto_rank
from .shapes import Footprint, adamw_state, model_parameters, param_bytes, target_matrices
from .surgery import split_target_weights


@dataclass
class SUMOConfig(RankedConfig):
    rank: int = 128
    """r: singular vectors kept per matrix (r' = min(r, m, n)); 0 = model.hidden_size // 4 (the 60m ratio),
    resolved from the final shape."""
    update_proj_gap: int = 200
    """K: the subspace is recomputed from the current gradient at updates 0, K, 2K, ... (Algorithm 1)."""
    scale: float = 0.25
    """α, the "projection back scale": the orthogonalised update is α·√max(m, n)·Q·O (optim/sumo.py)."""
    momentum: float = 0.9
    """μ: the moment's decay, M ← μM + Ĝ (Algorithm 1; its value is not given, 0.9 is the β1 of Lemma 3.1's
    moment and of the GaLore recipe)."""
    perp_grad: bool = True
    """Block 4's G_⊥ (the gradient outside the subspace) added to the update at the lr; False: the update is
    the back-projected orthogonalised moment alone."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_proj_gap < 1:
            raise LensError(f"method.update_proj_gap must be >= 1, got {self.update_proj_gap}")
        if not self.scale > 0:
            raise LensError(f"method.scale must be positive, got {self.scale}")
        if not 0 <= self.momentum < 1:
            raise LensError(f"method.momentum must be in [0, 1), got {self.momentum}")


# Rank per scale: SUMO Table 3's "r/d model" row (128 / 256 / 256 / 512, GaLore's ranks).
_RANKS = {"60m": 128, "130m": 256, "350m": 256, "1b": 512}
# K per scale: the paper states none for Table 3. 130m: its Table 9 grid (LLaMA-130M) has Table 3's 24.87 at K 250,
# rank 256; elsewhere GaLore's T 200.
_GAPS = {"60m": 200, "130m": 250, "350m": 200, "1b": 200}
_GAP_SOURCE = {"130m": "SUMO Table 9, whose 130M grid has Table 3's 24.87 at K 250 and rank 256"}
# CPU scales run 20 (nano) and 150 (micro) updates: K 10 refreshes the subspace 2 and 15 times (as GaLore's CPU
# presets), so the moment transport acts, where 200 would never refresh.
_CPU_GAP = 10
_SHARED = "lr 1e-2, α 0.25, wd 0, method.momentum 0.9, method.perp_grad True"
_SHARED_SOURCE = "lr, α, wd: GaLore's recipe, which Table 3 follows; μ: the β1 of Lemma 3.1's moment"
_SILENT = ("the paper gives no pre-training lr, α or μ, and K only in its 130M grid; with its √max(m, n) shape factor "
           "the update's RMS equals GaLore's at the same lr and α")


@register
class SUMO(RankedMethod):
    """Full-rank weights; SUMO (one moment in a rank-r SVD subspace, orthogonalised by SVD) on the targets."""

    name = "sumo"
    description = ("Full-rank weights; the target matrices keep one moment in a rank-r gradient subspace (SVD every "
                   "K steps), orthogonalised exactly by SVD (SUMO), embeddings, LM head and norms follow AdamW")
    colour = "#d6616b"
    Config = SUMOConfig
    memory_formula = ("P trainable, full-size gradients; state per m x n target one moment of the projected gradient "
                      "(r'·min(m, n)) and the projector (r'·max(m, n)), L·r'·(11h + 3i) for the LLaMA targets, and "
                      "AdamW's 2E moments + one `step` per other tensor; the SUMO step counters are python ints.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"lr": 1e-2, "weight_decay": 0.0}
        common = {"scale": 0.25, "momentum": 0.9, "perp_grad": True}
        if scale in _RANKS:
            rank, gap = _RANKS[scale], _GAPS[scale]
            source = _GAP_SOURCE.get(scale, "GaLore's T, the paper states none")
            return MethodPreset(params={"rank": rank, "update_proj_gap": gap, **common}, optim=optim, notes=[
                f"SUMO {scale}: rank {rank}, T {gap}, {_SHARED} (rank: SUMO Table 3, arXiv 2505.24749; T: {source}; "
                f"{_SHARED_SOURCE})", _SILENT])
        return MethodPreset(params={"rank": 0, "update_proj_gap": _CPU_GAP, **common}, optim=optim, notes=[
            f"SUMO {scale}: rank = hidden/4 (the 60m ratio 128/512), T {_CPU_GAP}, {_SHARED} (T is {_CPU_GAP}, not "
            f"200, so a CPU run refreshes the subspace and carries the moment over; {_SHARED_SOURCE})",
            _SILENT])

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """SUMO group (the targets): per m x n matrix the moment (r'·min(m, n)) and the basis (r'·max(m, n)), kept
        whole under FSDP2; AdamW group: torch AdamW's state."""
        targets = target_matrices(run.model, run.method_cfg.targets, linear_only=False)
        plain = tuple(model_parameters(run.model, exclude=tuple(targets)).values())
        r, size = auto_rank(run.method_cfg.rank, run.model), param_bytes(run)
        moment = sum(min(r, m, n) * min(m, n) for m, n in targets.values())
        basis = sum(min(r, m, n) * max(m, n) for m, n in targets.values())
        adam, adam_bytes = adamw_state(plain, size)
        return Footprint(trainable=tuple(model_parameters(run.model).values()),
                         state=({"moment": moment, "basis": basis}, adam),
                         state_bytes=size * (moment + basis) + adam_bytes, replicated_state=(0,))

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        cfg: SUMOConfig = self.cfg
        targets, plain = split_target_weights(model, cfg.targets)
        return SUMOAdamW([{"params": list(targets.values()), "matrix": True}, {"params": plain}], lr=optim.lr,
                         betas=(optim.beta1, optim.beta2), eps=optim.eps, weight_decay=optim.weight_decay,
                         rank=auto_rank(cfg.rank, self.run.model), update_proj_gap=cfg.update_proj_gap,
                         scale=cfg.scale, momentum=cfg.momentum, perp_grad=cfg.perp_grad)
