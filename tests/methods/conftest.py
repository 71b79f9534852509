"""Fixtures of the step-for-step reference tests (test_galore_fira, test_apollo, test_flora, test_spam,
test_golore): each module sets CFG (a tiny ModelConfig) and STEPS, and gets the same seeded model and batches."""

from __future__ import annotations

import pytest
import torch

from lowrank_lens.model import build_model


@pytest.fixture(scope="module")
def base_model(request):
    """The module's tiny model (CFG), seed 0; tests copy it before training."""
    return build_model(request.module.CFG, seed=0)


@pytest.fixture(scope="module")
def batches(request):
    """STEPS batches of 4 random rows of CFG.max_seq_len tokens, seed 0."""
    cfg, steps = request.module.CFG, request.module.STEPS
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, cfg.vocab_size, (4, cfg.max_seq_len), generator=g) for _ in range(steps)]
