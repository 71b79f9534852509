"""Row sources: batches are a pure function of (seed, step), rank slices tile the global batch, epochs
wrap, and a streaming source fast-forwarded to a step equals one that walked there."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lowrank_lens.data.rows import RowEncoder
from lowrank_lens.data.sources import MaterializedRows, StreamingRows
from lowrank_lens.errors import LensError


def numbered(n: int, seq_len: int = 4) -> np.ndarray:
    """Row i holds the value i everywhere, so a batch reads as the row indices it drew."""
    return np.repeat(np.arange(n, dtype=np.int32)[:, None], seq_len, axis=1)


def test_materialized_is_a_pure_function_of_seed_and_step():
    a, b = MaterializedRows(numbered(50), seed=7), MaterializedRows(numbered(50), seed=7)
    for step in (3, 0, 11, 3):  # any call order, fresh or reused object
        np.testing.assert_array_equal(a.rows(step, 8), b.rows(step, 8))
    assert not np.array_equal(a.rows(0, 8), MaterializedRows(numbered(50), seed=8).rows(0, 8))
    assert a.rows(0, 8).dtype == np.int32 and a.rows(0, 8).shape == (8, 4)


def test_materialized_follows_the_documented_permutation():
    src = MaterializedRows(numbered(10), seed=42)
    perm0 = np.random.default_rng([42, 0]).permutation(10)
    perm1 = np.random.default_rng([42, 1]).permutation(10)
    np.testing.assert_array_equal(src.rows(0, 4)[:, 0], perm0[:4])
    # batch 2 of size 4 covers positions 8..11: the end of epoch 0, then the start of epoch 1
    np.testing.assert_array_equal(src.rows(2, 4)[:, 0], np.concatenate([perm0[8:], perm1[:2]]))


def test_every_epoch_visits_each_row_once_in_a_new_order():
    src = MaterializedRows(numbered(12), seed=0)
    epoch0 = np.concatenate([src.rows(s, 4)[:, 0] for s in range(3)])
    epoch1 = np.concatenate([src.rows(s, 4)[:, 0] for s in range(3, 6)])
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("world", [2, 4])
def test_rank_slices_concatenate_to_the_global_batch(world):
    src = MaterializedRows(numbered(30), seed=1)
    for step in (0, 5, 9):
        parts = [src.rows(step, 8, rank=r, world=world) for r in range(world)]
        np.testing.assert_array_equal(np.concatenate(parts), src.rows(step, 8))


def test_bad_batch_split_is_a_lens_error():
    with pytest.raises(LensError, match="not divisible"):
        MaterializedRows(numbered(30), seed=1).rows(0, 7, rank=0, world=2)
    with pytest.raises(LensError, match="no rows"):
        MaterializedRows(numbered(0), seed=1)


def _stream(docs, tok, mode):
    enc = RowEncoder(tok, mode, 32)
    # a stand-in for an epoch-dependent shuffled stream: each epoch reverses the order of the previous one
    return StreamingRows(lambda epoch: iter(docs if epoch % 2 == 0 else docs[::-1]), enc)


@pytest.mark.parametrize("mode", ["pad", "packed"])
def test_streaming_fast_forward_equals_consecutive_calls(docs, bpe_tok, mode):
    docs = docs[:40]
    walked = _stream(docs, bpe_tok, mode)
    seen = [walked.rows(s, 6) for s in range(12)]  # 72 rows: pad mode wraps past the 40 documents
    for step in (0, 5, 11):
        np.testing.assert_array_equal(_stream(docs, bpe_tok, mode).rows(step, 6), seen[step])
    np.testing.assert_array_equal(walked.rows(3, 6), seen[3])  # going back restarts the stream
    if mode == "packed":
        assert all((r >= 0).all() for r in seen)


@pytest.mark.parametrize("mode", ["pad", "packed"])
def test_streaming_rank_slices_concatenate_to_the_global_batch(docs, bpe_tok, mode):
    docs = docs[:40]
    whole = _stream(docs, bpe_tok, mode)
    ranks = [_stream(docs, bpe_tok, mode) for _ in range(2)]
    for step in range(4):
        parts = [src.rows(step, 8, rank=r, world=2) for r, src in enumerate(ranks)]
        np.testing.assert_array_equal(np.concatenate(parts), whole.rows(step, 8))


def test_streaming_pad_rank_tokenizes_only_its_slice(docs, bpe_tok):
    calls = []

    class Spy(RowEncoder):
        def pad_rows(self, texts):
            calls.append(list(texts))
            return super().pad_rows(texts)

    src = StreamingRows(lambda epoch: iter(docs), Spy(bpe_tok, "pad", 32), prefetch=False)
    src.rows(3, 8, rank=1, world=2)
    src.rows(4, 8, rank=1, world=2)
    assert calls == [docs[28:32], docs[36:40]]


@pytest.mark.parametrize("mode", ["pad", "packed"])
def test_prefetch_never_changes_the_rows(docs, bpe_tok, mode):
    """Whatever the call pattern (next step, a jump back, a repeat, another batch size), the background
    prefetch returns exactly what a source without it returns."""
    enc = RowEncoder(bpe_tok, mode, 32)
    plain = StreamingRows(lambda epoch: iter(docs[: 30 + epoch]), enc, prefetch=False)
    own = copy.deepcopy(bpe_tok)  # the prefetch thread must not share a tokenizer with this thread
    fetching = StreamingRows(lambda epoch: iter(docs[: 30 + epoch]), RowEncoder(own, mode, 32))
    for step, batch in [(0, 6), (1, 6), (2, 6), (5, 6), (3, 6), (3, 6), (4, 4), (5, 4), (9, 6)]:
        np.testing.assert_array_equal(fetching.rows(step, batch), plain.rows(step, batch))


def test_streaming_empty_stream_is_a_lens_error(bpe_tok):
    src = StreamingRows(lambda epoch: iter([]), RowEncoder(bpe_tok, "pad", 32))
    with pytest.raises(LensError, match="no documents"):
        src.rows(0, 2)
