"""Multiple-choice scoring computed directly from a causal LM's logits, without lm-eval.

This restates what lm-evaluation-harness's `loglikelihood` computes for a decoder-only model (docs/study.md §1.6:
zero-shot `acc` = the choice whose continuation has the highest summed log-probability given the prompt;
`acc_norm` divides by the continuation's length in characters), so the harness's answers can be checked
against an independent computation (tests/downstream) and single questions can be inspected by hand.

Tokenization follows lm-eval's `_encode_pair` for causal models: trailing spaces of the context move to the
continuation, the context+continuation text is encoded as a whole, and the continuation's tokens are those
after the context's own encoding (so a merge across the boundary is scored the way the harness scores it).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval encodes them for a causal model."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def continuation_loglikelihood(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, context: str,
                               continuation: str) -> float:
    """sum_t log p(continuation token t | context, earlier continuation tokens), in float64."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont], device=next(model.parameters()).device)
    logits = model(input_ids=ids[:, :-1]).logits.double()
    logp = torch.log_softmax(logits[0, -len(cont):], dim=-1)
    target = ids[0, -len(cont):]
    return float(logp.gather(-1, target[:, None]).sum())


def choice_loglikelihoods(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, context: str,
                          choices: list[str], delimiter: str = " ") -> list[float]:
    """Summed log-likelihood of each choice (prefixed with lm-eval's target delimiter) after `context`."""
    return [continuation_loglikelihood(model, tokenizer, context, delimiter + c) for c in choices]


def predict(loglikelihoods: list[float], choices: list[str] | None = None) -> int:
    """The chosen index: argmax of the log-likelihoods, or of log-likelihood per character when `choices`
    are given (acc_norm's rule; lm-eval counts the characters of the choice text, without the delimiter)."""
    if choices is None:
        scores = loglikelihoods
    else:
        scores = [ll / len(c) for ll, c in zip(loglikelihoods, choices, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)
