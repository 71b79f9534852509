"""Token batches and the loss L(theta) every landscape, interpolation and curvature metric evaluates.

L(theta) is the token-weighted mean next-token NLL over a fixed token set, with positions whose label is
-100 excluded (docs/study.md §2 "Shared evaluation protocol"). Deviation: the study averages per-batch means,
which weights a short final batch like a full one; a token-weighted mean does not depend on how the
token set is cut into batches. Labels follow the HF causal-LM convention: `labels[b, t]` is the target of
position t and the shift (logits at t predict labels at t+1) happens here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from ...errors import LensError

IGNORE_INDEX = -100
Batch = Mapping[str, Tensor] | Tensor | tuple[Tensor, Tensor]
"""A batch: a dict with 'input_ids' [B, T] and optional 'labels' [B, T] and 'attention_mask' [B, T];
or a bare input_ids tensor; or an (input_ids, labels) pair."""


def prepare_batches(batches: Iterable[Batch], device: torch.device | str) -> list[dict[str, Tensor]]:
    """Normalise batches to dicts on `device`, once, so no point re-transfers or re-derives tokens.

    Missing labels are input_ids with positions where attention_mask == 0 set to -100 (padding never
    counts). Raises LensError if the set has no scored position.
    """
    out: list[dict[str, Tensor]] = []
    for i, b in enumerate(batches):
        if isinstance(b, Tensor):
            d = {"input_ids": b}
        elif isinstance(b, tuple):
            d = {"input_ids": b[0], "labels": b[1]}
        else:
            d = dict(b)
        if "input_ids" not in d:
            raise LensError(f"batch {i} has no 'input_ids' (keys: {sorted(d)})")
        d = {k: v.to(device) for k, v in d.items() if k in ("input_ids", "labels", "attention_mask")}
        if "labels" not in d:
            labels = d["input_ids"].clone()
            if "attention_mask" in d:
                labels = labels.masked_fill(d["attention_mask"] == 0, IGNORE_INDEX)
            d["labels"] = labels
        out.append(d)
    if token_count(out) == 0:
        raise LensError("the token set has no scored position (every shifted label is -100)")
    return out


def token_count(batches: Sequence[Mapping[str, Tensor]]) -> int:
    """Number of scored positions: labels[:, 1:] != -100, summed over batches."""
    return int(sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches))


def nll_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of next-token NLL. logits [B, T, V], labels [B, T]; logits at t predict labels at t+1.

    The labels are shifted (last position padded with -100), not the logits, so the [B, T, V] logits are
    never copied (HF's loss does the same). Half-precision logits are upcast to fp32 (as HF's loss does)
    so a bf16 model is not also scored in bf16; fp32 and fp64 logits keep their dtype, so `--dtype fp64`
    is fp64 end to end.
    """
    V = logits.shape[-1]
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # [B, T]
    flat = logits.reshape(-1, V)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return torch.nn.functional.cross_entropy(flat, shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def _logits(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out.logits


def batch_nll_sum(model: torch.nn.Module, batch: Mapping[str, Tensor],
                  params: Mapping[str, Tensor] | None = None) -> Tensor:
    """NLL sum of one batch, at the model's own parameters or (functionally) at `params`.

    `params` may name a subset of the model's parameters; the rest keep their values. Nothing is mutated.
    """
    kwargs = {"input_ids": batch["input_ids"]}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    out = model(**kwargs) if params is None else functional_call(model, dict(params), (), kwargs)
    return nll_sum(_logits(out), batch["labels"])


def mean_nll(model: torch.nn.Module, batches: Sequence[Mapping[str, Tensor]],
             params: Mapping[str, Tensor] | None = None) -> Tensor:
    """L(theta): token-weighted mean NLL over prepared batches (fp64 accumulation across batches)."""
    total = sum(batch_nll_sum(model, b, params).double() for b in batches)
    return total / token_count(batches)


def loss_terms(model: torch.nn.Module, batches: Sequence[Mapping[str, Tensor]]
               ) -> list[Callable[[Mapping[str, Tensor]], Tensor]]:
    """L as a sum of per-batch terms params -> nll_sum_b / N_total, for streaming second-order work.

    Summing derivatives of the terms one batch at a time keeps one batch's graph in memory at a time.
    """
    n = token_count(batches)
    return [lambda p, b=b: batch_nll_sum(model, b, p) / n for b in batches]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluate in eval mode (no dropout) and give the caller back the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
