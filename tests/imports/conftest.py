"""Fixtures of the import tests: one tokenizer and three architectures' checkpoint series (series_util)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from series_util import MAKERS, write_series
from transformers import PreTrainedTokenizerFast

from lowrank_lens.data.tokenizer import train_bpe


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    texts = [f"def f(x): return x + {i}  # the quick brown fox jumps over the lazy dog. " * 4 for i in range(300)]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(texts, 300).save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


@pytest.fixture(scope="session")
def series(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> dict[str, Path]:
    """{architecture: folder of checkpoint-N/ folders}."""
    root = tmp_path_factory.mktemp("series")
    out = {}
    for i, (arch, make) in enumerate(MAKERS.items()):
        torch.manual_seed(i)
        out[arch] = write_series(root / arch, make(len(tokenizer)), tokenizer)
    return out
