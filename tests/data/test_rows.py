"""Documents -> rows: the reference pad recipe (EOS, truncation, -1 after the document), a tokenizer
that adds EOS itself is not given a second one, packing leaves no mask, and rows -> model inputs."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from lowrank_lens.data.rows import RowEncoder, build_rows, to_model_inputs
from lowrank_lens.data.tokenizer import adds_eos, train_bpe


def test_pad_rows_end_in_one_eos_then_mask(bpe_tok, docs):
    enc = RowEncoder(bpe_tok, "pad", 32)
    assert not enc.adds_eos
    rows = enc.pad_rows(docs[:50])
    eos = bpe_tok.eos_token_id
    for doc, row in zip(docs[:50], rows, strict=True):
        real = row[row >= 0]
        n = len(real)
        assert (row[:n] >= 0).all() and (row[n:] == -1).all()  # mask only after the document
        assert real[-1] == eos and (real[:-1] != eos).all()
        ids = bpe_tok(doc, add_special_tokens=False)["input_ids"]
        assert list(real[:-1]) == ids[:31]  # truncated documents keep their first 31 tokens, then EOS
    assert (rows == -1).any() and (rows[:, -1] == eos).any()  # both short and truncated documents occur


def test_tokenizer_that_adds_eos_gets_no_second_one(docs):
    """A T5-like tokenizer (post-processor appends </s>) keeps exactly one EOS, also when truncated."""
    raw = train_bpe(docs, 400)
    eos = raw.token_to_id("</s>")
    raw.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>", model_max_length=32)
    assert adds_eos(tok)
    rows = RowEncoder(tok, "pad", 32).pad_rows(docs[:50])
    for row in rows:
        real = row[row >= 0]
        assert real[-1] == eos and (real[:-1] != eos).all()
        assert len(real) <= 32


def test_packed_rows_are_full_and_end_documents_with_eos(bpe_tok, docs):
    enc = RowEncoder(bpe_tok, "packed", 32)
    rows, n_docs = build_rows(docs, enc)
    assert n_docs == len(docs) and (rows >= 0).all()
    flat = np.concatenate([[*bpe_tok(d, add_special_tokens=False)["input_ids"], bpe_tok.eos_token_id]
                           for d in docs])
    assert len(rows) == len(flat) // 32  # the last partial row is dropped
    np.testing.assert_array_equal(rows.reshape(-1), flat[: len(rows) * 32])


def test_build_rows_limit(bpe_tok, docs):
    rows, _ = build_rows(docs, RowEncoder(bpe_tok, "pad", 32), limit=7)
    assert rows.shape == (7, 32) and rows.dtype == np.int32


def test_to_model_inputs_masks_labels_and_pads_inputs():
    rows = np.array([[5, 6, 2, -1, -1], [7, 8, 9, 10, 2]], dtype=np.int32)
    ids, labels = to_model_inputs(rows, pad_id=3)
    assert ids.dtype == labels.dtype == torch.long
    assert ids.tolist() == [[5, 6, 2, 3, 3], [7, 8, 9, 10, 2]]
    assert labels.tolist() == [[5, 6, 2, -100, -100], [7, 8, 9, 10, 2]]
    ids2, _ = to_model_inputs(torch.from_numpy(rows), pad_id=0)
    assert ids2[0, 3] == 0
