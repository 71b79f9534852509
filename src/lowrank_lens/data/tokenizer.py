"""Tokenizers: a byte-level BPE trained on the corpus (offline, cached), or any HF tokenizer by name/path.

The BPE (docs/ecosystem.md §6.3) is `tokenizers`' byte-level BPE: ByteLevel pre-tokenizer and decoder, the
256-byte initial alphabet (so no text is ever <unk>), special tokens `<unk> <s> </s> <pad>` (ids 0-3) and
vocab_size = the model's vocabulary. It has no post-processor: EOS is appended by the row builder, which
handles tokenizers that add EOS themselves (T5) and those that do not alike.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..atomic import atomic_path
from ..errors import LensError
from ..hashing import stable_hash

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
BPE_MAX_DOCUMENTS = 500_000
"""The BPE sees at most this many training documents (a hub stream is endless; 500k C4 documents are
about 1 GB of text, far more than a 32k vocabulary needs)."""
BPE_FORMAT_VERSION = 1


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE on `texts`. Deterministic for a given input and tokenizers version."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def batches() -> Iterator[list[str]]:
        it = iter(texts)
        while chunk := list(islice(it, 1000)):
            yield chunk

    tok.train_from_iterator(batches(), trainer=trainer)
    return tok


def wrap_bpe(path: Path, seq_len: int) -> PreTrainedTokenizerBase:
    return PreTrainedTokenizerFast(tokenizer_file=str(path), unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", model_max_length=seq_len)


def bpe_tokenizer(corpus_hash: str, train_texts: Callable[[], Iterable[str]], vocab_size: int, seq_len: int,
                  cache_dir: Path, log: Callable[[str], None] = print) -> tuple[PreTrainedTokenizerBase, Path]:
    """The corpus's BPE from the cache, training and saving it (atomically) on a miss.

    `train_texts` is called only on a miss, so a cached tokenizer costs no pass over the corpus.
    """
    floor = 256 + len(SPECIAL_TOKENS)  # the byte alphabet and the specials come before any merge
    if vocab_size < floor:
        raise LensError(f"data.tokenizer=bpe needs model.vocab_size >= {floor} (256 bytes + 4 special tokens), "
                        f"got {vocab_size}; use --set model.vocab_size={floor} or more")
    key = stable_hash({"corpus": corpus_hash, "vocab": vocab_size, "max_docs": BPE_MAX_DOCUMENTS,
                       "tokenizers": tokenizers.__version__, "format": BPE_FORMAT_VERSION})
    path = cache_dir / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    if not path.exists():
        t0 = time.perf_counter()
        tok = train_bpe(islice(train_texts(), BPE_MAX_DOCUMENTS), vocab_size)
        with atomic_path(path) as tmp:
            tok.save(str(tmp))
        log(f"data: trained a byte-level BPE of {tok.get_vocab_size()} tokens in "
            f"{time.perf_counter() - t0:.1f}s -> {path}")
    return wrap_bpe(path, seq_len), path


def pretrained_tokenizer(name: str, seq_len: int) -> PreTrainedTokenizerBase:
    """Any HF tokenizer by hub name or local path; one-line LensError when it cannot be loaded."""
    try:
        return AutoTokenizer.from_pretrained(name, model_max_length=seq_len)
    except Exception as e:  # OSError offline, ValueError/ImportError for odd folders or missing backends
        msg = " ".join(str(e).split())[:200]
        raise LensError(f"data.tokenizer {name!r} could not be loaded ({type(e).__name__}: {msg}); it needs the "
                        f"Hugging Face hub or a local tokenizer folder; offline use data.tokenizer=bpe") from None


def tokenizer_hash(tok: PreTrainedTokenizerBase) -> str:
    """Content hash of the vocabulary and rules, so caches follow the tokenizer, not its name."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tok.get_vocab().items())) + type(tok).__name__
    specials = json.dumps([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])
    return hashlib.sha256((blob + specials).encode()).hexdigest()[:16]


def adds_eos(tok: PreTrainedTokenizerBase) -> bool:
    """Whether encoding with special tokens already ends in EOS (T5 does; GPT-2, LLaMA and our BPE do not)."""
    ids = tok("a b", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[-1] == tok.eos_token_id


def check_tokenizer(tok: PreTrainedTokenizerBase, name: str, model_vocab: int) -> int | None:
    """The tokenizer must fit the model's embedding and have an EOS token to end documents with.

    One exception, because the reference recipe relies on it: t5-base has 32,100 entries for a 32,000-row
    embedding, the extra 100 being added sentinel tokens (<extra_id_*>) that ordinary text never produces.
    When every id >= model_vocab is such an added token, the tokenizer is accepted and those ids are mapped
    to the unknown token should they ever appear; the return value is that unknown-token id (else None).
    """
    if tok.eos_token_id is None:
        raise LensError(f"data.tokenizer {name!r} has no EOS token, which ends every document; "
                        f"pick another tokenizer or data.tokenizer=bpe")
    if len(tok) <= model_vocab:
        return None
    surplus = set(range(model_vocab, len(tok)))
    added = set(getattr(tok, "added_tokens_decoder", {}) or {})
    unk = tok.unk_token_id
    if surplus <= added and unk is not None and unk < model_vocab and tok.eos_token_id < model_vocab:
        return unk
    raise LensError(f"data.tokenizer {name!r} has {len(tok)} tokens but model.vocab_size is {model_vocab}; "
                    f"use --set model.vocab_size={len(tok)} or a smaller tokenizer")
