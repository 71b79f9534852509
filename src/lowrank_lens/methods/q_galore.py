"""Q-GaLore: GaLore with an INT4 projector refreshed adaptively and INT8 weights (arXiv 2407.08296).

The optimizer is `optim/q_galore.py`, restated from q_galore_torch (VITA-Group/Q-GaLore at 5bd2f1c, PyPI
q-galore-torch 1.0); its docstring gives the update and how each CUDA-only part is handled:

- the INT8 weights are *simulated*: the target weights stay float parameters, put on their group-wise INT8 grid
  (affine min-max, 256 entries a group) after every update by stochastic rounding, with the last scales and zero
  points kept in the optimizer state. So the model is untouched (no surgery): checkpoints, FSDP2 and the dense view
  (the weight itself) work as for GaLore. Real INT8 storage would hold each target entry in 1 byte instead of the
  parameter's 2 or 4; `footprint` counts what this implementation holds and `memory_formula` states the difference.
- bitsandbytes' 8-bit blockwise Adam state is not reproduced: the moments are GaLore's, in the parameters' dtype.
- the INT4 projector (uint8 codes, one per byte as upstream) and the adaptive refresh interval are as upstream.

tests/methods/test_q_galore.py checks the quantisers bitwise against the official pure-PyTorch functions and the
projector against the official GaLoreProjector (quant=True) bitwise in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..optim.q_galore import build
from . import register
from .base import MethodPreset
from .galore import GaLore, GaLoreConfig
from .ranks import auto_rank
from .shapes import Footprint, model_parameters, param_bytes, target_matrices

COMMIT = "VITA-Group/Q-GaLore at 5bd2f1c"


@dataclass
class QGaLoreConfig(GaLoreConfig):
    """GaLore's fields (rank, T = update_proj_gap, α = scale, eps) plus Q-GaLore's quantisation and refresh."""

    proj_bits: int = 4
    """Bits of the projector's codes (`--proj_bits`; 4 = INT4)."""
    proj_group_size: int = 256
    """Consecutive basis entries sharing one scale and zero point (`--proj_group_size`)."""
    weight_bits: int = 8
    """Bits of the target weights' grid (`--weight_bits`; upstream supports 8 only)."""
    weight_group_size: int = 256
    """Consecutive weight entries (row-major) sharing one scale and zero point (`--weight_group_size`)."""
    stochastic_round: bool = True
    """Round the updated weights to their grid stochastically (`--stochastic_round`); False: to nearest."""
    cos_threshold: float = 0.4
    """The refresh interval grows when the mean cosine of the last queue_size refreshes is >= this."""
    gamma_proj: float = 2.0
    """Factor of the refresh interval's growth (`--gamma_proj`)."""
    queue_size: int = 5
    """Refreshes whose cosine similarities are averaged (`--queue_size`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("proj_bits", "weight_bits"):
            if not 2 <= getattr(self, name) <= 8:
                raise LensError(f"method.{name} must lie in [2, 8] (codes are stored in uint8), got "
                                f"{getattr(self, name)}")
        for name in ("proj_group_size", "weight_group_size", "queue_size"):
            if getattr(self, name) < 1:
                raise LensError(f"method.{name} must be >= 1, got {getattr(self, name)}")
        if not -1.0 <= self.cos_threshold <= 1.0:
            raise LensError(f"method.cos_threshold must lie in [-1, 1] (a cosine similarity), got {self.cos_threshold}")
        if self.gamma_proj < 1.0:
            raise LensError(f"method.gamma_proj must be >= 1 (the refresh interval never shrinks), got "
                            f"{self.gamma_proj}")


# Per scale: rank, lr (scripts/pretrain_c4/llama_<scale>.sh; all: α 0.25, T 200, wd 0, 8-bit weights with
# stochastic rounding, 4-bit projector, argparse defaults for the rest, betas (0.9, --beta2 0.95), eps 1e-8 of
# bitsandbytes' AdamW8bit).
_REFERENCE = {"60m": (128, 0.015), "130m": (256, 0.015), "350m": (256, 0.01), "1b": (1024, 0.01)}
# CPU runs (20 and 150 updates): T 5 (nano) and 10 (micro) and a queue of 2, so several refreshes happen, the
# queue fills and the interval can grow; group sizes 256 divide every nano/micro target and basis.
_CPU = {"nano": (5, 2), "micro": (10, 2)}


@register
class QGaLore(GaLore):
    """GaLore with an INT4 projector refreshed on an adaptive interval and INT8-grid (simulated) weights."""

    name = "q-galore"
    description = ("GaLore with an INT4-quantised projector whose refresh interval doubles while the subspace stays "
                   "similar, and target weights kept on a group-wise INT8 grid by stochastic rounding (simulated)")
    colour = "#e6550d"
    Config = QGaLoreConfig
    unused_fields = {"optim.eps": "method.eps"}
    memory_formula = ("P trainable, full-size gradients; state as GaLore (2E moments of the non-targets; per m x n "
                      "target 2r'·max(m, n) moments, a 0-dim side flag) but the projector as r'·min(m, n) uint8 codes "
                      "plus 2r'·min(m, n)/g_p scales and zero points, and per target min(m, n) for the previous first "
                      "singular vector and 2mn/g_w weight scales and zero points. The INT8 weights are simulated: the "
                      "targets stay in the parameters' dtype; real INT8 storage would save (b - 1) bytes per target "
                      "entry (b = 2 in bf16, 4 in fp32), and bitsandbytes' 8-bit moments (b - 1) per moment entry.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"weight_decay": 0.0, "beta2": 0.95}
        quant = {"proj_bits": 4, "proj_group_size": 256, "weight_bits": 8, "weight_group_size": 256,
                 "stochastic_round": True, "cos_threshold": 0.4, "gamma_proj": 2.0, "eps": 1e-8, "scale": 0.25}
        if scale in _REFERENCE:
            rank, lr = _REFERENCE[scale]
            params = {**quant, "rank": rank, "update_proj_gap": 200, "queue_size": 5}
            return MethodPreset(params=params, optim={**optim, "lr": lr}, notes=[
                f"Q-GaLore {scale}: rank {rank}, lr {lr:g}, α 0.25, T 200, wd 0, beta2 0.95, Adam eps 1e-8, 4-bit "
                "projector and 8-bit weights in groups of 256, stochastic rounding, cos_threshold 0.4, gamma_proj 2, "
                f"queue 5 (scripts/pretrain_c4/llama_{scale}.sh and run_pretrain.py's defaults, {COMMIT}; eps: "
                "bitsandbytes' AdamW8bit default)",
                "the INT8 weights are simulated (float weights on the INT8 grid) and the moments are not 8-bit"])
        gap, queue = _CPU[scale]
        params = {**quant, "rank": 0, "update_proj_gap": gap, "queue_size": queue}
        return MethodPreset(params=params, optim={**optim, "lr": 0.015}, notes=[
            f"Q-GaLore {scale}: rank = hidden/4 (the 60m ratio 128/512), lr 0.015, α 0.25, T {gap}, wd 0, beta2 0.95, "
            f"Adam eps 1e-8, 4-bit projector and 8-bit weights in groups of 256, stochastic rounding, "
            f"cos_threshold 0.4, gamma_proj 2, queue {queue}; T and the queue are shorter than the reference's 200 "
            "and 5 so a CPU run refreshes, fills the queue and can lengthen T"])

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        super().check_config(run)
        cfg: QGaLoreConfig = run.method_cfg
        r = auto_rank(cfg.rank, run.model)
        for name, (m, n) in target_matrices(run.model, cfg.targets, linear_only=False).items():
            if (m * n) % cfg.weight_group_size:
                raise LensError(f"method.weight_group_size {cfg.weight_group_size} does not divide the {m * n} "
                                f"entries of {name} ({m} x {n})")
            if (min(r, m, n) * min(m, n)) % cfg.proj_group_size:
                raise LensError(f"method.proj_group_size {cfg.proj_group_size} does not divide the "
                                f"{min(r, m, n) * min(m, n)} entries of the projector of {name} ({m} x {n})")

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """GaLore's state with the basis as uint8 codes plus per-group scales and zeros, the previous first vector
        and the weights' per-group scales and zeros (param dtype); the gap, queue and step are python numbers."""
        cfg: QGaLoreConfig = run.method_cfg
        targets = target_matrices(run.model, cfg.targets, linear_only=False)
        plain = sum(model_parameters(run.model, exclude=tuple(targets)).values())
        r = auto_rank(cfg.rank, run.model)
        low = sum(min(r, m, n) * max(m, n) for m, n in targets.values())
        basis = sum(min(r, m, n) * min(m, n) for m, n in targets.values())
        groups = sum(m * n for m, n in targets.values()) // cfg.weight_group_size
        projected = {"exp_avg": low, "exp_avg_sq": low, "proj_right": len(targets),
                     "past_vector": sum(min(m, n) for m, n in targets.values()),
                     "basis_codes": basis, "basis_scales": basis // cfg.proj_group_size,
                     "basis_zeros": basis // cfg.proj_group_size, "weight_scales": groups, "weight_zeros": groups}
        state = ({"exp_avg": plain, "exp_avg_sq": plain}, projected)
        floats = sum(v for g in state for k, v in g.items() if k != "basis_codes")
        return Footprint(trainable=tuple(model_parameters(run.model).values()), state=state,
                         state_bytes=param_bytes(run) * floats + basis, replicated_state=(1,))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        plain, projected = super().param_groups(model)
        cfg: QGaLoreConfig = self.cfg
        projected.update(proj_bits=cfg.proj_bits, proj_group_size=cfg.proj_group_size, weight_bits=cfg.weight_bits,
                         weight_group_size=cfg.weight_group_size, stochastic_round=cfg.stochastic_round,
                         cos_threshold=cfg.cos_threshold, gamma_proj=cfg.gamma_proj, queue_size=cfg.queue_size,
                         seed=self.run.train.seed)
        return [plain, projected]

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        return build(self.param_groups(model), **self.optimizer_kwargs(optim))
