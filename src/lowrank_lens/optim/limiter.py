"""Fira's norm-growth limiter (docs/methods.md §3.2 step 6), shared by FiraAdamW (on the residual S) and
ApolloAdamW (on the whole update U): a tensor's norm may grow by at most γ per step relative to the previous
*limited* norm, which the optimizer keeps as a 0-dim tensor in the parameter's state."""

from __future__ import annotations

from typing import Any

import torch

# Hard-coded in both official codes (Fira's step 6, APOLLO's step 4).
_LIMITER_EPS = 1e-8


def limit_norm_growth(state: dict[str, Any], update: torch.Tensor, gamma: float, key: str) -> torch.Tensor:
    """`update` divided in place so that its norm is at most γ x state[key], the previous limited norm; the
    first call only records the norm. state[key] becomes the norm after limiting."""
    norm = torch.linalg.vector_norm(update)  # 0-dim, stays on the device (no host sync)
    if key not in state:
        state[key] = norm  # the first step only records
        return update
    ratio = norm / (state[key] + _LIMITER_EPS)
    # limiter = max(ratio, γ) / γ, evaluated as the official codes do (comparison with γ and division in the
    # update's dtype; an unlimited step divides by exactly 1), so pure-bf16 runs match them bitwise. A
    # clamp(min=γ) instead would divide every unlimited step by bf16(γ)/γ = 0.998, amplifying the update.
    limiter = torch.where(ratio < gamma, torch.ones_like(ratio), ratio / gamma)
    state[key] = norm / limiter
    return update.div_(limiter)


def check_gamma(gamma: float) -> None:
    """ValueError unless γ >= 1 (a factor below 1 would shrink every update)."""
    if gamma < 1.0:
        raise ValueError(f"gamma must be >= 1 (the allowed growth factor), got {gamma}")
