"""Tiny fixtures shared by the maths tests: a 2-layer LlamaForCausalLM and a padded token set."""

from __future__ import annotations

import torch

from lowrank_lens.config import ModelConfig
from lowrank_lens.model import build_model

TINY = ModelConfig(hidden_size=64, intermediate_size=176, num_layers=2, num_heads=2, vocab_size=256, max_seq_len=64)


def tiny_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return build_model(TINY, seed=0).to(dtype)


def tiny_batches(seed: int = 1, pad: bool = True) -> list[dict[str, torch.Tensor]]:
    """Two batches of 2 x 24 tokens; with pad=True one row ends in padding (attention_mask 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY.vocab_size, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[1, 15:] = 0
    return [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in params.items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
