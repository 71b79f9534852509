"""AdamMini: AdamW with one second moment per block of a parameter instead of one per entry (Zhang et al.,
"Adam-mini: Use Fewer Learning Rates To Gain More", ICLR 2025; docs/methods.md §21).

Each parameter group says how its tensors are cut into blocks (`blocks`):

- "row": one block per row of a 2-D tensor (an output neuron of a Linear, a token of an embedding);
- "head": one block per `head_rows` consecutive rows (an attention head of a query or key projection, whose
  weight stacks the heads' rows one head after the other);
- "tensor": the whole tensor is one block (a norm's gain; the official default for anything unnamed).

With G the gradient, b the block an entry lies in, t the parameter's update count (a python int), one update:

1. s_b = mean of G² over block b (for "tensor": the sum of G² divided by the entry count, as the official
   code computes it);
2. v_b ← β2·v_b + (1-β2)·s_b: one second moment per block, in the parameter's dtype;
3. W ← (1 - lr·wd)·W (decoupled weight decay, skipped when wd = 0);
4. M ← M + (1-β1)(G - M): a first moment per entry, as Adam's;
5. W ← W - lr·M·c_b with c_b = (1/(1-β1^t)) / (√v_b / √(1-β2^t) + eps).

The operations and their order are those of the official `Adam_mini.step` (zyushun/Adam-mini 1.1.1), so the
two agree bitwise (tests/methods/test_adam_mini.py); a one-entry block reduces this to AdamW's update. Which
block rule a parameter gets (by its name in the official code) is the caller's choice: the plugin groups the
parameters (methods/adam_mini.py).

Sharded parameters (FSDP2, dim-0 shards): rows never straddle ranks, so "row" statistics are computed on the
rank's own rows and v is a (rows, 1) DTensor sharded like its parameter (a checkpoint stores it whole; after a
load it is split again at the first step). A head may straddle two ranks and "tensor" needs every entry, so
those gather the gradient whole (one tensor at a time), compute v exactly as one process does and keep it whole
on every rank (a few numbers per tensor); each rank then applies its own rows. M is elementwise and sharded
with its parameter. State per parameter: `exp_avg` (the parameter's shape), `exp_avg_sq` ((rows, 1),
(heads, 1) or 0-dim) and `step` (int).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ..sharding import DTensor, full, is_sharded, local, local_part
from .paramwise import ParamwiseOptimizer

BLOCKS = ("row", "head", "tensor")


def _check_group(group: dict[str, Any]) -> None:
    blocks = group["blocks"]
    if blocks not in BLOCKS:
        raise ValueError(f"blocks must be one of {BLOCKS}, got {blocks!r}")
    for p in group["params"]:
        if blocks != "tensor" and p.dim() != 2:
            raise ValueError(f"'{blocks}' blocks need 2-D parameters, got shape {tuple(p.shape)}")
        if blocks == "head" and (group["head_rows"] < 1 or p.shape[0] % group["head_rows"]):
            raise ValueError(f"head_rows {group['head_rows']} does not divide the {p.shape[0]} rows of a parameter")


def _sharded_rows(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` (rows, 1), the same on every rank, as a DTensor split over the ranks like `like`'s rows."""
    return DTensor.from_local(local_part(whole, like), like.device_mesh, like.placements, shape=whole.shape,
                              stride=whole.stride())


def _new_second_moment(p: torch.Tensor, blocks: str, head_rows: int) -> torch.Tensor:
    if blocks == "tensor":
        return torch.zeros((), dtype=p.dtype, device=local(p).device)
    n = p.shape[0] if blocks == "row" else p.shape[0] // head_rows
    zeros = torch.zeros(n, 1, dtype=p.dtype, device=local(p).device)
    return _sharded_rows(zeros, p) if blocks == "row" and is_sharded(p) else zeros


def block_mean_square(grad: torch.Tensor, blocks: str, head_rows: int) -> torch.Tensor:
    """s_b of step 1 for a whole (unsharded) or a rank's rows ("row" only) of a gradient."""
    if blocks == "tensor":
        return torch.sum(grad * grad) / float(grad.numel())
    per_block = grad if blocks == "row" else grad.reshape(grad.shape[0] // head_rows, -1)
    return torch.mean(per_block * per_block, dim=1, keepdim=True)


class AdamMini(ParamwiseOptimizer):
    """AdamW with a second moment per block; each group's `blocks` (and `head_rows`) set the partition."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "blocks": "tensor", "head_rows": 0})
        for group in self.param_groups:
            _check_group(group)

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        blocks, head_rows = group["blocks"], group["head_rows"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = _new_second_moment(p, blocks, head_rows)
        elif blocks == "row" and is_sharded(p) and not is_sharded(state["exp_avg_sq"]):
            state["exp_avg_sq"] = _sharded_rows(state["exp_avg_sq"], p)  # loaded whole from a checkpoint
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if blocks == "row":  # the rank's rows are whole rows
            mean_square = block_mean_square(local(p.grad), blocks, head_rows)
        else:
            mean_square = block_mean_square(full(p.grad), blocks, head_rows)
        second = local(state["exp_avg_sq"])
        second.mul_(beta2).add_(mean_square, alpha=1 - beta2)
        state["step"] += 1
        step = state["step"]
        weight = local(p)
        if wd > 0.0:
            weight.mul_(1 - lr * wd)
        first = local(state["exp_avg"])
        first.lerp_(local(p.grad), 1 - beta1)
        denom = (second.sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        scale = (1 / (1 - beta1 ** step)) / denom
        if blocks == "head":  # one factor per head -> one per row, then the rank's rows
            scale = local_part(scale.repeat_interleave(head_rows, dim=0), p)
        update = first * scale
        update.mul_(lr)
        weight.add_(-update)
