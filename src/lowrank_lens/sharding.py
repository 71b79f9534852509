"""Sharded parameters seen whole: what method and optimizer code uses to touch a parameter outside forward and
backward (a GaLore projector refresh, a ReLoRA merge, a checkpoint) the same way on 1 process, DDP or FSDP2.

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, train.parallel=fsdp) a parameter between steps is a
DTensor: each rank holds a dim-0 chunk (torch.chunk over the world), and so are its gradient and its AdamW
moments. Elementwise code (AdamW, weight decay, a norm) runs on DTensors unchanged. Code that needs the
whole matrix (an SVD of the gradient, B @ A, a quantile, a random mask of the full shape) gathers it with
`full`, computes exactly what one process computes, and writes back the rank's part with `set_full_` /
`add_full_`. On plain tensors every helper is the identity, so callers never branch on the parallelism.

`full` is a collective: every rank must call it, in the same order (the code paths that use it run on every
rank at the same step, e.g. Method.after_step and the optimizer step).
"""

from __future__ import annotations

from typing import Any

import torch

try:  # torch.distributed is optional in some torch builds
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - CPU builds of torch 2.13 ship it
    DTensor, distribute_tensor = None, None


def is_sharded(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (all-gathered when sharded; `t` itself otherwise)."""
    return t.full_tensor() if is_sharded(t) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own part, a plain tensor sharing `t`'s storage (in-place ops on it change `t`)."""
    return t.to_local() if is_sharded(t) else t


def local_part(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of `whole` (the same on every rank) that this rank holds of `like`; `whole` when unsharded.
    A local split: no communication."""
    if not is_sharded(like):
        return whole
    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements, src_data_rank=None).to_local()


@torch.no_grad()
def set_full_(t: torch.Tensor, whole: torch.Tensor) -> None:
    """t = whole, where `whole` is the full value (the same on every rank)."""
    local(t).copy_(local_part(whole, t))


@torch.no_grad()
def add_full_(t: torch.Tensor, whole: torch.Tensor, alpha: float = 1.0) -> None:
    """t += alpha * whole, where `whole` is the full value (the same on every rank)."""
    local(t).add_(local_part(whole, t).to(local(t).dtype), alpha=alpha)


def full_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with every sharded tensor gathered (collective), others as they are."""
    return {k: full(v) if is_sharded(v) else v for k, v in state.items()}


def local_numel(t: torch.Tensor) -> int:
    """Elements this rank stores of `t` (its shard under FSDP2)."""
    return local(t).numel()
