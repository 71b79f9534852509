"""The evaluation rows of an imported run: every metric and the validation perplexities read them.

`--tokens ROWS.npy` takes integer rows as they are (-1 = masked); `--tokens TEXT` tokenizes a text file
(documents separated by blank lines) with the checkpoint's own tokenizer and packs it into rows; without
`--tokens`, a fixed sample of the embedded corpus's validation split (the same documents for every import)
is tokenized and packed the same way. A checkpoint without a tokenizer needs an .npy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from ..config import DataConfig
from ..data.cache import default_cache_dir, load_token_rows
from ..data.corpus import open_corpus
from ..data.rows import RowEncoder, build_rows
from ..data.tokenizer import tokenizer_hash
from ..errors import LensError, first_line

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def _tokenizer(hf_dir: Path) -> Any:

    if not any((hf_dir / f).is_file() for f in TOKENIZER_FILES):  # transformers would build an empty one
        raise LensError(f"the checkpoint has no tokenizer files ({', '.join(TOKENIZER_FILES)}); pass --tokens "
                        f"ROWS.npy (int token rows [N, T], -1 = masked) or a text file with a tokenizer beside it")
    try:
        tok = AutoTokenizer.from_pretrained(str(hf_dir))
    except Exception as e:  # no tokenizer files, or ones transformers cannot read
        raise LensError(f"the checkpoint has no readable tokenizer ({type(e).__name__}: {first_line(e)[:120]}); "
                        f"pass --tokens ROWS.npy (int token rows [N, T], -1 = masked)") from None
    if tok.eos_token_id is None:
        raise LensError("the checkpoint's tokenizer has no EOS token, which ends each packed document; pass "
                        "--tokens ROWS.npy")
    return tok


def _text_documents(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LensError(f"--tokens {path} is neither an .npy of token rows nor UTF-8 text ({e})") from None
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    if not docs:
        raise LensError(f"--tokens {path} holds no text")
    return docs


def evaluation_rows(opts: Any, hf_dir: Path, vocab_size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(rows int32 [N, T], data fingerprint) for the options of imports.importer.ImportOptions."""
    if opts.tokens and Path(opts.tokens).suffix == ".npy":
        rows = load_token_rows(opts.tokens, vocab_size, fix="pass int token rows made with the checkpoint's tokenizer")
        try:
            tok = _tokenizer(hf_dir)
            pad, th = (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id), tokenizer_hash(tok)
        except LensError:
            pad, th = 0, None  # masked positions are never scored, so any id in range does as padding
        return rows.astype(np.int32), {"imported": True, "source": str(opts.tokens), "tokenizer": "given rows",
                                       "tokenizer_hash": th, "pad_id": int(pad), "seq_len": int(rows.shape[1]),
                                       "rows": int(len(rows))}
    tok = _tokenizer(hf_dir)
    enc = RowEncoder(tok, "packed", opts.seq_len)
    if opts.tokens:
        if not Path(opts.tokens).is_file():
            raise LensError(f"--tokens {opts.tokens} does not exist; pass an .npy of token rows or a text file")
        texts, source = _text_documents(Path(opts.tokens)), str(opts.tokens)
    else:
        data = DataConfig(source="embedded")
        texts, source = open_corpus(data, default_cache_dir(data), log=lambda m: None).texts("val"), "embedded:val"
    rows, docs = build_rows(texts, enc, limit=opts.rows)
    if len(rows) == 0:
        raise LensError(f"{source} gives no full row of {opts.seq_len} tokens; pass a longer text or --seq-len")
    if int(rows.max()) >= vocab_size:
        raise LensError(f"the checkpoint's tokenizer gives id {int(rows.max())}, beyond the model's vocabulary "
                        f"({vocab_size}); the folder's tokenizer is not the model's")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return rows.astype(np.int32), {"imported": True, "source": source, "tokenizer": "the checkpoint's",
                                   "tokenizer_hash": tokenizer_hash(tok), "pad_id": int(pad),
                                   "seq_len": opts.seq_len, "rows": int(len(rows)), "documents": int(docs),
                                   "packing": "packed, EOS between documents"}
