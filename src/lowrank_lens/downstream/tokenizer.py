"""The tokenizer a run was trained with, for scoring text with its checkpoints (docs/study.md §1.6).

A run records its tokenizer in config.json under "data_fingerprint": "tokenizer" is 'bpe-<V>' (the byte-level
BPE trained on the run's corpus, saved as JSON in the data cache, path in "tokenizer_file") or a Hugging Face
name/path; "tokenizer_hash" is a content hash of the vocabulary and rules. The BPE file lives in the data cache
of the machine that trained, so on another machine it may be missing: it is then looked up in this machine's
cache under the same name, and can be rebuilt (`rebuild=True`), deterministically from the run's corpus, which
is checked by comparing the corpus and tokenizer hashes with the recorded ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..data.cache import default_cache_dir
from ..data.corpus import open_corpus
from ..data.tokenizer import bpe_tokenizer, pretrained_tokenizer, tokenizer_hash, wrap_bpe
from ..errors import LensError
from ..runfolder.files import load_run_config, read_run_json

log = logging.getLogger("lowrank_lens")


def run_fingerprint(run_dir: str | Path) -> dict[str, Any]:
    """The run's data fingerprint (config.json "data_fingerprint"); LensError when there is none."""

    path = Path(run_dir) / "config.json"
    fp = read_run_json(run_dir).get("data_fingerprint")
    if not isinstance(fp, dict) or not fp.get("tokenizer"):
        raise LensError(f"{path} records no tokenizer (data_fingerprint.tokenizer); was it written by training?")
    return fp


def _candidates(run_dir: Path, fp: dict[str, Any]) -> list[Path]:
    """Where the BPE file may be: the recorded path, then this machine's data cache under the same name."""

    out = []
    if fp.get("tokenizer_file"):
        recorded = Path(fp["tokenizer_file"]).expanduser()
        out.append(recorded)
        out.append(default_cache_dir(load_run_config(run_dir).data) / "tokenizers" / recorded.name)
    return out


def _check_hash(tok: PreTrainedTokenizerBase, fp: dict[str, Any], run_dir: Path, where: str) -> None:
    want = fp.get("tokenizer_hash")
    if want and tokenizer_hash(tok) != want:
        raise LensError(f"the tokenizer at {where} (hash {tokenizer_hash(tok)}) is not the one run {run_dir} was "
                        f"trained with (hash {want}); rebuild it from the run's corpus (rebuild=True)")


def rebuild_run_tokenizer(run_dir: str | Path) -> Path:
    """Re-train a run's byte-level BPE from its corpus into the data cache; returns the tokenizer file.

    Deterministic: the same corpus (checked against the recorded corpus hash) and tokenizers version give
    the same merges; the result is checked against the recorded tokenizer hash. Needs the corpus (the
    embedded one is rebuilt from the standard library; a local folder must still exist at the recorded path).
    """

    run_dir = Path(run_dir)
    fp = run_fingerprint(run_dir)
    if not str(fp["tokenizer"]).startswith("bpe-"):
        raise LensError(f"run {run_dir} used the Hugging Face tokenizer {fp['tokenizer']!r}; there is nothing to "
                        f"rebuild, it loads by name (it needs the hub or a local copy)")
    cfg = load_run_config(run_dir)
    cache = default_cache_dir(cfg.data)
    corpus = open_corpus(cfg.data, cache, log.info)
    if fp.get("corpus_hash") and corpus.hash != fp["corpus_hash"]:
        raise LensError(f"the corpus {cfg.data.source!r} here (hash {corpus.hash}) differs from the one run {run_dir} "
                        f"was trained on (hash {fp['corpus_hash']}); its BPE cannot be rebuilt from it")
    tok, path = bpe_tokenizer(corpus.hash, lambda: corpus.texts("train"), cfg.model.vocab_size, cfg.data.seq_len,
                              cache, log.info)
    _check_hash(tok, fp, run_dir, str(path))
    return path


def load_run_tokenizer(run_dir: str | Path, rebuild: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a run, as a transformers fast tokenizer (what lm-eval's HFLM takes).

    BPE runs: the recorded file, else the same file name in this machine's data cache, else (rebuild=True)
    re-trained from the run's corpus; otherwise a one-line LensError says how to get it back. HF-name runs:
    `AutoTokenizer.from_pretrained(name)`. Either way the content hash must match the recorded one.
    """

    run_dir = Path(run_dir)
    fp = run_fingerprint(run_dir)
    name = str(fp["tokenizer"])
    seq_len = load_run_config(run_dir).data.seq_len
    if fp.get("imported"):  # a run trained elsewhere: its checkpoint's tokenizer, copied in at import
        tok = pretrained_tokenizer(str(run_dir / "hf_config"), seq_len)
        _check_hash(tok, fp, run_dir, str(run_dir / "hf_config"))
        return tok
    if not name.startswith("bpe-"):
        tok = pretrained_tokenizer(name, seq_len)
        _check_hash(tok, fp, run_dir, name)
        return tok
    for path in _candidates(run_dir, fp):
        if path.is_file():
            tok = wrap_bpe(path, seq_len)
            _check_hash(tok, fp, run_dir, str(path))
            return tok
    if rebuild:
        return wrap_bpe(rebuild_run_tokenizer(run_dir), seq_len)
    recorded = fp.get("tokenizer_file") or "(not recorded)"
    raise LensError(f"the {name} tokenizer of run {run_dir} is missing ({recorded} does not exist here: trained on "
                    f"another machine, or the cache was cleared); rebuild it deterministically from the run's corpus "
                    f"with load_run_tokenizer(run_dir, rebuild=True) (eval-downstream --rebuild-tokenizer), or point "
                    f"LOWRANK_LENS_CACHE at a data cache that holds tokenizers/{Path(str(recorded)).name}")
