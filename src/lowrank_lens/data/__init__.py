"""Data: corpus -> tokenizer -> token rows, with every expensive step cached (docs/design.md "data/").

`build_data` is the one entry point of the training loop. It resolves the corpus (corpus.py), gets the
tokenizer (tokenizer.py), and returns the training rows as a `RowSource` (sources.py) plus a fixed
validation block `val_rows`. Materialized sources tokenize the corpus once into .npy rows under the cache;
streaming sources (c4, or data.streaming=True) tokenize on the fly and cache only the validation rows.

Under several processes the main rank builds every cache before `barrier()`, the others read them after,
so only one process trains the tokenizer or tokenizes the corpus.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import tokenizers
from transformers import PreTrainedTokenizerBase

from ..atomic import atomic_path, write_json_atomic
from ..config import DataConfig
from ..errors import LensError
from ..hashing import stable_hash
from .cache import default_cache_dir, load_token_rows
from .corpus import Corpus, open_corpus
from .rows import MASK, RowEncoder, build_rows, to_model_inputs
from .sources import MaterializedRows, RowSource, StreamingRows, count_tokens
from .tokenizer import bpe_tokenizer, check_tokenizer, pretrained_tokenizer, tokenizer_hash

__all__ = ["DataBundle", "RowSource", "MaterializedRows", "StreamingRows", "build_data", "to_model_inputs",
           "default_cache_dir", "MASK"]

ROWS_FORMAT_VERSION = 1


@dataclass
class DataBundle:
    tokenizer: PreTrainedTokenizerBase
    pad_id: int
    """Token id fed at masked positions (their labels are -100, so its value never reaches the loss)."""
    train: RowSource
    val_rows: np.ndarray
    """int32 [N_val, seq_len], -1 = masked; fixed forever (the loop saves it as val_tokens.npy)."""
    fingerprint: dict
    """JSON-serialisable provenance: corpus, tokenizer, rows, mode, seq_len, versions."""


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr, dtype=np.int32))


def _load_or_build_rows(cfg: DataConfig, corpus: Corpus, enc: RowEncoder, folder: Path, n_val: int,
                        with_train: bool, log: Callable[[str], None]) -> tuple[np.ndarray | None, np.ndarray, dict]:
    """(train rows or None, val rows, meta) from `folder`, tokenizing the corpus first on a miss.

    meta.json is written last and marks the folder complete: a reader that sees it sees both .npy files.
    """
    meta_path = folder / "meta.json"
    if meta_path.exists():
        # A damaged cache entry (truncated, garbage, a pickle: never unpickled) is rebuilt, not an error:
        # its content is a pure function of its key, so rebuilding is always right and asks nothing of the user.
        try:
            meta = json.loads(meta_path.read_bytes())
            train = load_token_rows(folder / "train.npy", mmap=True) if with_train else None
            val = load_token_rows(folder / "val.npy")
            if isinstance(meta, dict):
                log(f"data: reusing cached rows {folder}")
                return train, val, meta
        except (LensError, OSError, ValueError) as e:
            log(f"data: cached rows {folder} are unreadable ({e}); rebuilding them")
    t0 = time.perf_counter()
    meta: dict = {}
    train = None
    if with_train:
        train, n_docs = build_rows(corpus.texts("train"), enc)
        meta.update(train_rows=len(train), train_documents=n_docs, train_tokens=count_tokens(train))
    t1 = time.perf_counter()
    val, n_val_docs = build_rows(corpus.texts("val"), enc, limit=n_val)
    meta.update(val_rows=len(val), val_documents_read=n_val_docs, val_tokens=count_tokens(val))
    if len(val) == 0:
        raise LensError(f"no validation rows: data.source {cfg.source!r} held out no documents; raise "
                        f"data.val_fraction (now {cfg.val_fraction}) or use more documents")
    if train is not None:
        _save_npy(folder / "train.npy", train)
    _save_npy(folder / "val.npy", val)
    write_json_atomic(meta_path, meta)
    what = f"{len(train)} train rows ({t1 - t0:.1f}s) and " if train is not None else ""
    log(f"data: tokenized {what}{len(val)} validation rows in {time.perf_counter() - t0:.1f}s -> {folder}")
    return train, val, meta


def _build(cfg: DataConfig, model_vocab: int, log: Callable[[str], None]) -> DataBundle:
    cache = default_cache_dir(cfg)
    corpus = open_corpus(cfg, cache, log)
    corpus.check()
    if cfg.tokenizer == "bpe":
        tok, tok_path = bpe_tokenizer(corpus.hash, lambda: corpus.texts("train"), model_vocab, cfg.seq_len,
                                      cache, log)
        tok_name = f"bpe-{model_vocab}"
    else:
        tok, tok_path = pretrained_tokenizer(cfg.tokenizer, cfg.seq_len), None
        tok_name = cfg.tokenizer
    unk_for_surplus = check_tokenizer(tok, tok_name, model_vocab)
    limit = model_vocab if unk_for_surplus is not None else None
    if limit is not None:
        log(f"data: {tok_name} has {len(tok)} entries for model.vocab_size {model_vocab}; its added tokens above "
            f"that (e.g. T5's <extra_id_*> sentinels) map to the unknown token if they ever occur")
    enc = RowEncoder(tok, cfg.mode, cfg.seq_len, limit, unk_for_surplus)
    thash = tokenizer_hash(tok)
    streaming = cfg.streaming or corpus.hub
    n_val = math.ceil(cfg.val_tokens / cfg.seq_len)
    key = stable_hash({"corpus": corpus.hash, "tokenizer": thash, "mode": cfg.mode, "seq_len": cfg.seq_len,
                       "max_documents": cfg.max_documents, "val_fraction": cfg.val_fraction, "n_val": n_val,
                       "streaming": streaming, "vocab_limit": limit, "format": ROWS_FORMAT_VERSION})
    folder = cache / "rows" / f"{'stream' if streaming else 'rows'}-{cfg.mode}-{cfg.seq_len}-{key}"
    train_rows, val, meta = _load_or_build_rows(cfg, corpus, enc, folder, n_val, not streaming, log)
    if len(val) < n_val:
        log(f"warning: only {len(val)} validation rows ({count_tokens(val)} tokens) instead of {n_val} "
            f"(data.val_tokens={cfg.val_tokens}): the held-out documents ran out")
    if streaming:
        seed = cfg.shuffle_seed
        # The stream tokenizes in a prefetch thread: give it its own tokenizer, because a fast tokenizer's
        # __call__ sets truncation state on the shared Rust object and the caller may use bundle.tokenizer.
        stream_enc = RowEncoder(copy.deepcopy(tok), cfg.mode, cfg.seq_len, limit, unk_for_surplus)
        train: RowSource = StreamingRows(lambda epoch: corpus.texts("train", seed, epoch), stream_enc)
    else:
        assert train_rows is not None
        train = MaterializedRows(train_rows, cfg.shuffle_seed)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    fingerprint = {
        "source": cfg.source, "corpus": corpus.fingerprint, "corpus_hash": corpus.hash,
        "tokenizer": tok_name, "tokenizer_hash": thash, "tokenizer_file": str(tok_path) if tok_path else None,
        "tokenizer_len": len(tok), "eos_id": enc.eos, "pad_id": pad_id, "tokenizer_adds_eos": enc.adds_eos,
        "mode": cfg.mode, "seq_len": cfg.seq_len, "streaming": streaming, "shuffle_seed": cfg.shuffle_seed,
        "rows_key": key, "rows_dir": str(folder), **meta,
        "versions": {"datasets": datasets.__version__, "tokenizers": tokenizers.__version__},
    }
    return DataBundle(tokenizer=tok, pad_id=int(pad_id), train=train, val_rows=val, fingerprint=fingerprint)


def build_data(cfg: DataConfig, model_vocab: int, *, is_main: bool = True,
               barrier: Callable[[], None] = lambda: None, log: Callable[[str], None] = print) -> DataBundle:
    """Corpus, tokenizer, training rows and validation rows for `cfg`, building caches on first use.

    The main rank builds (or finds) every cache, then calls `barrier()`; other ranks call `barrier()` first
    and then read the caches. Should a cache be missing on a non-main rank (a cache_dir that is not
    shared), that rank rebuilds it; atomic writes keep concurrent builders safe. The main rank reaches the
    barrier even when it fails, so the other ranks raise the same one-line error instead of hanging.
    """
    if is_main:
        try:
            return _build(cfg, model_vocab, log)
        finally:
            barrier()
    barrier()
    return _build(cfg, model_vocab, log)
