"""SLTrain: every target linear is a sum of a low-rank and a fixed-support sparse matrix (docs/methods.md §5).

    W = B (A alpha/r) + S,   y = x W^T
    A: r x in, B: out x r, S: out x in with int(delta * out * in) non-zeros at a fixed random support

The scale multiplies A before the product, as the official layer does (it passes `lora_A * scale` to its
kernel): (B A) s rounds differently from B (A s) in bf16 unless s is a power of two (about 3e-3 relative
at s = 1.5), so forward, backward and the dense view all use B (A s).

The support is drawn once, at wrap time, from a recorded seed (`support_seed`) with a private generator, and
kept as a buffer so it travels in the state dict; only its values are trained. Init (docs/methods.md §5.1):
A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0, S values ~ U(-1/sqrt(in), 1/sqrt(in)), so the
initial W is S alone. The reference builds W in a C++ extension; here a pure-PyTorch autograd Function does the
same: it builds W in forward, does not keep it, and rebuilds it in backward (docs/methods.md §8 item 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..errors import LensError
from ..typed_fields import seed_field
from . import register
from .base import MethodPreset
from .ranks import RankedConfig, RankedMethod, auto_alpha, auto_rank
from .reading import CheckpointReader, drop_rope_buffers, refuse_keys, side_json, tensor_stems
from .schedule import stable_seed
from .shapes import Footprint, adamw_footprint, factored_parameters, target_matrices
from .surgery import replace_linears


def sample_support(numel: int, nnz: int, generator: torch.Generator) -> torch.Tensor:
    """`nnz` distinct flat indices in [0, numel), uniform over all subsets of that size, sorted (int64, CPU).

    The reference takes a prefix of randperm(numel); at 1B that is 11M-element permutations for 168 layers.
    Drawing i.i.d. indices and de-duplicating gives, by symmetry of the labels, a uniformly random subset of
    its size; a random nnz-subset of it is then uniform too, at O(nnz log nnz) cost.
    """
    if nnz > numel // 2:  # dense-ish supports: the permutation is cheap and needs no retries
        return torch.randperm(numel, generator=generator)[:nnz].sort().values
    idx = torch.empty(0, dtype=torch.long)
    while idx.numel() < nnz:
        missing = nnz - idx.numel()
        draw = torch.randint(numel, (missing + missing // 8 + 16,), generator=generator)
        idx = torch.unique(torch.cat([idx, draw]))
    keep = torch.randperm(idx.numel(), generator=generator)[:nnz]
    return idx[keep].sort().values


def build_weight(lora_a: torch.Tensor, lora_b: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """Dense W (out x in) = B (scale A) + S in the factors' dtype, in the official kernel's order."""
    w = lora_b @ (lora_a * scale)  # out x in
    w.view(-1).index_add_(0, index, values.to(w.dtype))  # the support has no duplicates: a plain scatter
    return w


class SparseLowRankLinear(torch.autograd.Function):
    """y = x (B (scale A) + S)^T without keeping W for backward (docs/methods.md §5.1, "Kernel").

    Backward rebuilds W, forms dx = g W, frees W, then dW = g^T x (out x in) and, as the official kernel
    with As = scale A as its input, dB = dW As^T, dA = scale (B^T dW), dS = dW at the support. At most one
    dense out x in matrix is alive at a time, as in the reference extension. Under autocast the two big
    matmuls run in the autocast dtype while W is built in the parameters' dtype (autocast would otherwise
    break the scatter's dtype match).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, values: torch.Tensor,
                index: torch.Tensor, scale: float) -> torch.Tensor:
        dev = x.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        with torch.autocast(dev, enabled=False):
            w = build_weight(lora_a, lora_b, values, index, scale)  # out x in
            y = F.linear(x.to(cdt), w.to(cdt))  # [..., out]
        ctx.save_for_backward(x, lora_a, lora_b, values, index)
        ctx.scale, ctx.cdt = scale, cdt
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, lora_a, lora_b, values, index = ctx.saved_tensors
        need_x, need_a, need_b, need_s = ctx.needs_input_grad[:4]
        cdt, scale = ctx.cdt, ctx.scale
        dx = da = db = ds = None
        with torch.autocast(g.device.type, enabled=False):
            g2 = g.reshape(-1, g.shape[-1]).to(cdt)  # N x out
            if need_x:
                w = build_weight(lora_a, lora_b, values, index, scale)  # recomputed, out x in
                dx = (g2 @ w.to(cdt)).view(*g.shape[:-1], x.shape[-1]).to(x.dtype)  # [..., in]
                del w
            if need_a or need_b or need_s:
                x2 = x.reshape(-1, x.shape[-1]).to(cdt)  # N x in
                dw = (g2.t() @ x2).to(lora_a.dtype)  # out x in
                if need_a:
                    da = (lora_b.t() @ dw).mul_(scale)  # r x in
                if need_b:
                    db = dw @ (lora_a * scale).t()  # out x r
                if need_s:
                    ds = dw.view(-1).index_select(0, index).to(values.dtype)  # nnz
        return dx, da, db, ds, None, None


class SLTrainLinear(nn.Module):
    """W = B (A alpha/r) + S with S on a fixed support; replaces a bias-free nn.Linear (docs/methods.md §5.1)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, density: float,
                 layer_name: str = "", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scale = alpha / rank
        self.layer_name = layer_name  # the module name at wrap time: stable seeds and dense-view keys
        nnz = int(density * out_features * in_features)  # the reference's count, truncated
        kw = {"device": device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **kw))  # r x in
        self.lora_B = nn.Parameter(torch.empty(out_features, rank, **kw))  # out x r
        self.sparse_value = nn.Parameter(torch.empty(nnz, **kw))  # values of S at the support
        # Flat indices into out x in; a buffer, so the support is saved with the weights and never trained.
        self.register_buffer("sparse_index", torch.empty(nnz, dtype=torch.long, device=device))

    def reset_parameters(self, support_seed: int, value_seed: int) -> None:
        """Draw the support from `support_seed` and A, S values from `value_seed` on CPU (device-independent)."""
        if self.lora_A.is_meta:  # counting parameters: nothing to draw
            return
        g = torch.Generator().manual_seed(support_seed)
        index = sample_support(self.out_features * self.in_features, self.sparse_index.numel(), g)
        g = torch.Generator().manual_seed(value_seed)
        a = torch.empty(self.lora_A.shape)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)  # U(-1/sqrt(in), 1/sqrt(in))
        bound = 1 / math.sqrt(self.in_features)
        s = torch.empty(self.sparse_value.shape).uniform_(-bound, bound, generator=g)
        with torch.no_grad():
            self.sparse_index.copy_(index)
            self.lora_A.copy_(a)
            self.lora_B.zero_()  # the low-rank part starts at 0: initial W = S
            self.sparse_value.copy_(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        return SparseLowRankLinear.apply(x, self.lora_A, self.lora_B, self.sparse_value, self.sparse_index,
                                         self.scale)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The exact W (out x in) this layer applies."""
        return build_weight(self.lora_A, self.lora_B, self.sparse_value, self.sparse_index, self.scale)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.rank}, scale={self.scale:g}, "
                f"nnz={self.sparse_index.numel()}")


@dataclass
class SLTrainConfig(RankedConfig):
    rank: int = 0
    """r; 0 = model.hidden_size // 4 (the 60m ratio), resolved from the final shape."""
    alpha: float = 32.0
    """The low-rank part is scaled by alpha / rank (`--lora_alpha`); 0 = rank / 4 (scale 0.25, the 60m
    ratio 32 / 128), resolved from the final rank."""
    density: float = 0.03
    """delta, the fraction of non-zeros in S (`--sp_ratio`; every script uses 0.03, argparse says 0.01)."""
    support_seed: int = seed_field(42)
    """Seed of the sparse supports (the reference seeds 42). Independent of train.seed, so runs that differ
    only in their training seed share the supports; each layer's support is f(support_seed, layer name)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.density <= 1:
            raise LensError(f"method.density must be in (0, 1], got {self.density}")
        if self.alpha < 0:
            raise LensError(f"method.alpha must be >= 0 (0 = rank / 4), got {self.alpha}")


class SLTrainReader(CheckpointReader):
    """Reads the official SLTrain script's checkpoints too (`lowrank-lens import`)."""

    @classmethod
    def official_layout(cls, folder: Path, keys: list[str]) -> bool:
        """The official script's save_pretrained of its wrapped LLaMA: splora_config.json beside it, and per
        target t.lora_A (r x in), t.lora_B (out x r), t.sparse_value and t.sparse_index (int64, flat row-major
        into out x in): this plugin's own names and encoding."""
        return (folder / "splora_config.json").is_file() or any(k.endswith(".sparse_index") for k in keys)

    @classmethod
    def from_official(cls, folder: Path, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """The tensors as they are; r / lora_alpha / sp_ratio become rank / alpha / density, which must give
        each target's saved number of values (int(density·m·n), as both codes count). A trained scale
        (--train_scaling) has no counterpart here and is refused."""
        state, side = drop_rope_buffers(state), side_json(folder, "splora_config.json")
        refuse_keys(state, ".scaling", SLTrain.name, "a trained scale, --train_scaling")
        stems = tensor_stems(state, ".sparse_index")
        first = stems[0]
        m, n = state[f"{first}.lora_B"].shape[0], state[f"{first}.lora_A"].shape[1]
        density = float(side.get("sp_ratio") or state[f"{first}.sparse_value"].numel() / (m * n))
        for t in stems:
            want = int(density * state[f"{t}.lora_B"].shape[0] * state[f"{t}.lora_A"].shape[1])
            have = state[f"{t}.sparse_value"].numel()
            if want != have:
                raise LensError(f"the official {SLTrain.name} checkpoint's {t} has {have} sparse values, not the "
                                f"{want} its density {density} gives; add sp_ratio to splora_config.json")
        return dict(state), {"rank": int(side.get("r") or state[f"{first}.lora_A"].shape[0]),
                             "alpha": float(side.get("lora_alpha", 32.0)), "density": density}


_STUDY = {  # docs/study.md §1.4 (60m/130m/350m, the study's scripts) and docs/methods.md §5.2 (1b)
    "60m": {"rank": 128, "alpha": 32.0, "lr": 2e-3},
    "130m": {"rank": 256, "alpha": 16.0, "lr": 3e-3},
    "350m": {"rank": 256, "alpha": 16.0, "lr": 2e-3},
    "1b": {"rank": 512, "alpha": 8.0, "lr": 3e-3},
}
_OFFICIAL_STEPS = {"60m": "11K/1.1K", "130m": "22K/2.2K", "350m": "65K/6.5K", "1b": "140K/10K"}


@register
class SLTrain(RankedMethod):
    """Sparse plus low-rank reparameterisation of the 7 matrices per block; AdamW on everything."""

    name = "sltrain"
    scaled_by_alpha = True  # method.alpha 0 = rank / 4
    description = ("Every target linear is a trained low-rank product plus a sparse matrix on a fixed random "
                   "support; AdamW on everything")
    colour = "#e377c2"
    Config = SLTrainConfig
    Reader = SLTrainReader
    linear_targets_only = True
    memory_formula = ("E + L·r·(11h + 3i) + Σ int(δ·out·in) sparse values trainable; state 2 x that + `step`s.")

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """The targets' dense weights are discarded; A, B and the sparse values of each target and every other
        parameter train with AdamW; the int64 support indices are buffers."""
        cfg: SLTrainConfig = run.method_cfg
        targets, trainable = factored_parameters(run, auto_rank(cfg.rank, run.model))
        nnz = tuple(int(cfg.density * m * n) for m, n in targets.values())  # as SLTrainLinear counts them
        return adamw_footprint(run, (*trainable, *nnz), buffers=nnz, buffer_bytes=8 * sum(nnz))

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        super().check_config(run)
        cfg: SLTrainConfig = run.method_cfg
        # S keeps int(density * out * in) entries (the reference's count): below one entry S is empty.
        matrices = target_matrices(run.model, cfg.targets, linear_only=True)
        name, (out, inn) = min(matrices.items(), key=lambda kv: kv[1][0] * kv[1][1])
        if int(cfg.density * out * inn) < 1:
            raise LensError(f"method.density {cfg.density:g} leaves S of {name} ({out} x {inn}) without a non-zero; "
                            f"use method.density >= {1 / (out * inn):.3g}")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        if scale not in _STUDY:
            return MethodPreset(params={"rank": 0, "alpha": 0.0, "density": 0.03},
                                notes=[f"SLTrain {scale}: rank = hidden/4, alpha = rank/4 (scale 0.25: the 60m ratios "
                                       "r = d/4 and alpha/r = 32/128), delta 0.03, AdamW wd 0, no clipping"])
        v = _STUDY[scale]
        notes = [f"SLTrain {scale}: r {v['rank']}, delta 0.03, alpha {v['alpha']:g} (scale "
                 f"{v['alpha'] / v['rank']:g}), AdamW wd 0, no clipping (docs/methods.md §5.2)",
                 f"official scripts train {_OFFICIAL_STEPS[scale]} steps/warmup; we keep the shared "
                 "recipe's length and 10% warmup, as the study did"]
        if scale in ("60m", "350m"):
            notes.append(f"lr {v['lr']:g} is the study's value (docs/study.md §1.4); the official script uses 3e-3")
        if scale == "1b":
            notes.append("1b is not in the study: official script values (docs/methods.md §5.2)")
        return MethodPreset(params={"rank": v["rank"], "alpha": v["alpha"], "density": 0.03},
                            optim={"lr": v["lr"]}, notes=notes)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        cfg: SLTrainConfig = self.cfg
        rank = auto_rank(cfg.rank, self.run.model)
        alpha = auto_alpha(cfg.alpha, rank)

        def wrap(name: str, mod: nn.Linear) -> SLTrainLinear:
            new = SLTrainLinear(mod.in_features, mod.out_features, rank, alpha, cfg.density, name,
                                device=mod.weight.device, dtype=mod.weight.dtype)
            new.reset_parameters(stable_seed(cfg.support_seed, name), stable_seed(self.run.train.seed, "sltrain", name))
            return new

        replace_linears(model, cfg.targets, self.name, wrap)  # the dense N(0, 0.02^2) weights are discarded,
        return model  # as in the reference

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {m.layer_name: m.dense_weight() for m in model.modules() if isinstance(m, SLTrainLinear)}
