"""Validation loss on the run's fixed token set, in two definitions (docs/methods.md §1.4).

- `val_loss` / `val_ppl`: the token-weighted mean NLL over every unmasked target of the fixed set — the
  quantity perplexity is meant to be.
- `val_loss_reference` / `val_ppl_reference`: what the reference repositories and the study print: the
  mean of per-batch token-mean losses divided by (number of batches + 1) — an off-by-one that biases the
  loss low by about N/(N+1) — then averaged over ranks. Computed with `eval_batch_size` per batch, on this
  run's fixed set (the reference reads ~10M tokens of a streamed split), so it is comparable with published
  numbers up to that data difference.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import to_model_inputs
from .distributed import DistEnv


def token_nll(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL (fp32) and the number of targets. labels use -100 for masked positions."""
    logits = model(input_ids=input_ids).logits  # [B, T, V]
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                          reduction="sum")
    return nll, int((targets != -100).sum())


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_rows: np.ndarray, pad_id: int, batch_size: int, env: DistEnv,
             autocast: contextlib.AbstractContextManager | None = None, lockstep: bool = False) -> dict[str, float]:
    """Both validation metrics over `val_rows` (int32 [N, T], -1 = masked). Batches are split over ranks.
    `lockstep` (FSDP2, which all-gathers in every forward): a rank with one batch fewer than the others runs
    one more forward whose result it drops, so every rank runs the same number."""

    was_training = model.training
    model.eval()
    nll_sum, n_tok, batch_mean_sum, n_batches = 0.0, 0, 0.0, 0
    starts = list(range(0, len(val_rows), batch_size))
    mine = starts[env.rank::env.world]
    rounds = -(-len(starts) // env.world) if lockstep else len(mine)
    for j in range(rounds):
        start = mine[j] if j < len(mine) else starts[0]
        input_ids, labels = to_model_inputs(val_rows[start:start + batch_size], pad_id)
        with autocast or contextlib.nullcontext():
            nll, n = token_nll(model, input_ids.to(env.device), labels.to(env.device))
        if n == 0 or j >= len(mine):  # nothing to count, or the lockstep forward
            continue
        nll_sum += float(nll)
        n_tok += n
        batch_mean_sum += float(nll) / n
        n_batches += 1
    model.train(was_training)
    # The reference divides each rank's sum of batch means by (its batch count + 1), then averages ranks.
    ref_rank = batch_mean_sum / (n_batches + 1)
    total_nll, total_tok, ref_sum = env.sum([nll_sum, n_tok, ref_rank]).tolist()
    loss = total_nll / max(total_tok, 1)
    ref = ref_sum / env.world
    return {"val_loss": loss, "val_ppl": math.exp(loss), "val_loss_reference": ref,
            "val_ppl_reference": math.exp(ref), "val_tokens": int(total_tok)}
