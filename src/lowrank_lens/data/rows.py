"""Documents -> fixed-length token rows (int32 [N, seq_len], -1 = masked), and rows -> model inputs.

Two modes (docs/methods.md §1.2):
- `pad`, the reference recipe: each document on its own, truncated so that it ends in EOS, then padded;
  the positions after the document are -1. A tokenizer that adds EOS itself (T5's `</s>`) is encoded
  with max_length=seq_len and not given a second EOS (ReLoRA's pretokenizer doubles it); any other gets
  max_length=seq_len-1 and an appended EOS. Other special tokens the tokenizer adds (a LLaMA BOS) stay.
- `packed`: documents without special tokens, each followed by EOS, concatenated and cut into full
  rows; the last partial row is dropped, so packed rows hold no -1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .tokenizer import adds_eos

MASK = -1
CHUNK_DOCS = 256  # documents per tokenizer call: batched calls run in Rust, in parallel


class RowEncoder:
    """Turns lists of texts into rows for one tokenizer, mode and seq_len."""

    def __init__(self, tok: PreTrainedTokenizerBase, mode: str, seq_len: int, vocab_limit: int | None = None,
                 unk_id: int | None = None) -> None:
        self.tok, self.mode, self.seq_len = tok, mode, seq_len
        self.eos = int(tok.eos_token_id)
        self.adds_eos = adds_eos(tok)
        # Ids >= vocab_limit (added sentinel tokens beyond the embedding, see check_tokenizer) become unk_id.
        self.vocab_limit, self.unk_id = vocab_limit, unk_id

    def _fit(self, ids: np.ndarray) -> np.ndarray:
        if self.vocab_limit is not None:
            ids[ids >= self.vocab_limit] = self.unk_id
        return ids

    def pad_rows(self, texts: list[str]) -> np.ndarray:
        """One row per text: tokens ending in EOS, then -1 up to seq_len."""
        L = self.seq_len
        out = np.full((len(texts), L), MASK, dtype=np.int32)
        if not texts:
            return out
        max_len = L if self.adds_eos else L - 1
        enc = self.tok(texts, add_special_tokens=True, truncation=True, max_length=max_len,
                       verbose=False)["input_ids"]
        for i, ids in enumerate(enc):
            if not self.adds_eos:
                ids = [*ids, self.eos]
            out[i, : len(ids)] = ids
        return self._fit(out)

    def doc_tokens(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's tokens followed by EOS (no other special tokens), for packing."""
        enc = self.tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [self._fit(np.asarray([*ids, self.eos], dtype=np.int32)) for ids in enc]


class Packer:
    """Accumulates token arrays and hands out full rows; the remainder waits for the next documents."""

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self._parts: list[np.ndarray] = []
        self._n = 0

    def add(self, arrays: list[np.ndarray]) -> None:
        self._parts += arrays
        self._n += sum(len(a) for a in arrays)

    def full_rows(self) -> int:
        return self._n // self.seq_len

    def take(self, n_rows: int) -> np.ndarray:
        """The next n_rows rows (requires full_rows() >= n_rows)."""
        flat = np.concatenate(self._parts) if len(self._parts) != 1 else self._parts[0]
        k = n_rows * self.seq_len
        rows, rest = flat[:k].reshape(n_rows, self.seq_len), flat[k:]
        self._parts, self._n = ([rest] if len(rest) else []), len(rest)
        return rows


def chunks(texts: Iterable[str], size: int = CHUNK_DOCS) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(islice(it, size)):
        yield chunk


def build_rows(texts: Iterable[str], enc: RowEncoder, limit: int | None = None) -> tuple[np.ndarray, int]:
    """All rows of `texts` (at most `limit`), and how many documents were read to build them."""
    L = enc.seq_len
    out: list[np.ndarray] = []
    n_rows = n_docs = 0
    packer = Packer(L)
    for chunk in chunks(texts):
        if limit is not None and n_rows >= limit:
            break
        n_docs += len(chunk)
        if enc.mode == "pad":
            new = enc.pad_rows(chunk)
        else:
            packer.add(enc.doc_tokens(chunk))
            new = packer.take(packer.full_rows())
        out.append(new)
        n_rows += len(new)
    rows = np.concatenate(out) if out else np.zeros((0, L), dtype=np.int32)
    return (rows if limit is None else rows[:limit]), n_docs


def to_model_inputs(rows: np.ndarray | torch.Tensor, pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(input_ids, labels) as int64: masked positions become pad_id in the inputs and -100 in the labels.

    transformers' causal-LM loss shifts the labels itself and ignores -100, so a padded row contributes
    exactly its real next-token predictions, EOS included.
    """
    t = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows).long()
    masked = t < 0
    input_ids = t.masked_fill(masked, pad_id)
    labels = t.masked_fill(masked, -100)
    return input_ids, labels
