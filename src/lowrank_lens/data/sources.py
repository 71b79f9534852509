"""Row sources: the training batches as a function of the step.

Contract shared by both implementations: `rows(step, batch_size, rank, world)` returns the rank's
contiguous slice [rank*b, (rank+1)*b) (b = batch_size // world) of the GLOBAL batch number `step`, which
covers rows [step*batch_size, (step+1)*batch_size) of one fixed row sequence. The sequence does not depend
on the number of processes, so 1 and 2 processes train on the same data, unlike the reference's
`split_dataset_by_node` (docs/methods.md §1.2), and a resumed run sees what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from ..errors import LensError
from .rows import MASK, Packer, RowEncoder, chunks


class RowSource(Protocol):
    num_rows: int | None
    """Rows per epoch (None for a stream of unknown length)."""

    def rows(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray: ...


def _slice(step: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """First global row index and row count of the rank's slice of batch `step`."""
    if world < 1 or not 0 <= rank < world:
        raise LensError(f"rank {rank} is not in [0, world={world})")
    if batch_size % world:
        raise LensError(f"global batch {batch_size} is not divisible by the {world} processes; "
                        f"pick a train.total_batch_size that is")
    if step < 0:
        raise LensError(f"step must be >= 0, got {step}")
    b = batch_size // world
    return step * batch_size + rank * b, b


class MaterializedRows:
    """Rows held in memory (or memory-mapped from the .npy cache), reshuffled every epoch.

    Epoch e is `np.random.default_rng([seed, e]).permutation(n)`; row p of the concatenated epochs is
    rows[perm_{p // n}[p % n]]. Everything is a pure function of (seed, step, batch_size).
    """

    def __init__(self, rows: np.ndarray, seed: int) -> None:
        if len(rows) == 0:
            raise LensError("the training split produced no rows; use more documents (data.max_documents) "
                            "or a shorter data.seq_len")
        self.data, self.seed, self.num_rows = rows, seed, len(rows)
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 4:  # a batch touches at most two epochs; keep memory bounded
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        return self._perms[epoch]

    def rows(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
        start, b = _slice(step, batch_size, rank, world)
        pos = np.arange(start, start + b)
        epochs, within = pos // self.num_rows, pos % self.num_rows
        idx = np.empty(b, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            idx[sel] = self.permutation(int(e))[within[sel]]
        return np.ascontiguousarray(self.data[idx], dtype=np.int32)


class StreamingRows:
    """Rows built on the fly from a document stream that repeats with a new epoch when it ends.

    Calls with consecutive steps continue the stream; a call behind the current position restarts it and
    one ahead fast-forwards (resume). In pad mode a row is a document, so the rank skips the other ranks'
    documents without tokenizing them; in packed mode row boundaries depend on every earlier token, so
    each rank tokenizes the whole stream (the price of world-size independent packing).

    With `prefetch`, the batch of the next step (same batch size, rank and world) is built in a background
    thread while the caller trains on this one; the tokenizer's Rust code releases the GIL, so reading and
    tokenizing overlap with the training step. Only that thread touches the stream state while a prefetch
    is pending, and a prefetched batch the caller does not ask for is discarded, so results never depend
    on timing.
    """

    def __init__(self, texts: Callable[[int], Iterator[str]], enc: RowEncoder, prefetch: bool = True) -> None:
        """`texts(epoch)` iterates the training documents of one epoch."""
        self._texts, self.enc, self.num_rows = texts, enc, None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rows-prefetch") if prefetch else None
        self._pending: tuple[tuple[int, int, int, int], Future] | None = None
        self._reset()

    def _reset(self) -> None:
        self._epoch, self._pos = 0, 0  # _pos: global index of the next row the stream yields
        self._it = self._texts(0)
        self._empty_epoch = True
        self._packer = Packer(self.enc.seq_len)

    def _next_docs(self, n: int) -> list[str]:
        """The next n documents, wrapping to a new epoch when the stream ends."""
        out: list[str] = []
        while len(out) < n:
            try:
                out.append(next(self._it))
                self._empty_epoch = False
            except StopIteration:
                if self._empty_epoch:
                    raise LensError("the training stream holds no documents; check data.source "
                                    "and data.val_fraction") from None
                self._epoch += 1
                self._empty_epoch = True
                self._it = self._texts(self._epoch)
        return out

    def _advance(self, n: int, keep: bool) -> np.ndarray | None:
        """Consume the next n rows of the stream; build them only if `keep`."""
        self._pos += n  # a LensError mid-way leaves the source unusable, which is fine: it is fatal
        if self.enc.mode == "pad":
            if not keep:
                for chunk in chunks(range(n), 4096):  # skip documents without tokenizing them
                    self._next_docs(len(chunk))
                return None
            return self.enc.pad_rows(self._next_docs(n))
        if not keep:  # fast-forward in pieces so a long resume never holds the skipped tokens at once
            while n > 0:
                m = min(n, 1024)
                self._fill(m)
                self._packer.take(m)
                n -= m
            return None
        self._fill(n)
        return self._packer.take(n)

    def _fill(self, n: int) -> None:
        while self._packer.full_rows() < n:
            self._packer.add(self.enc.doc_tokens(self._next_docs(256)))

    def rows(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
        _slice(step, batch_size, rank, world)  # validate in the caller's thread
        key = (step, batch_size, rank, world)
        out = None
        if self._pending is not None:
            pending_key, future = self._pending
            self._pending = None
            if pending_key == key:
                out = future.result()
            else:
                # wait for it; its result and any error belong to a batch nobody asked for, but a failure
                # may have left the stream half-advanced, so start over (the next call fast-forwards)
                if future.exception() is not None:
                    self._reset()
        if out is None:
            out = self._compute(*key)
        if self._pool is not None:
            nxt = (step + 1, batch_size, rank, world)
            self._pending = (nxt, self._pool.submit(self._compute, *nxt))
        return out

    def _compute(self, step: int, batch_size: int, rank: int, world: int) -> np.ndarray:
        start, b = _slice(step, batch_size, rank, world)
        if start < self._pos:
            self._reset()
        if start > self._pos:
            self._advance(start - self._pos, keep=False)
        out = self._advance(b, keep=True)
        assert out is not None and out.shape == (b, self.enc.seq_len)
        return out.astype(np.int32, copy=False)


def count_tokens(rows: np.ndarray) -> int:
    """Real (non-masked) positions in a block of rows."""
    return int((np.asarray(rows) != MASK).sum())
