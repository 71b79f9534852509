"""Shared fixtures of the data tests: offline hub, a tmp cache, and a small synthetic corpus.

The hub flags are set at import, before `datasets`/`huggingface_hub` read them, so anything that would
reach the network fails at once instead of retrying for 20 s.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lowrank_lens.config import DataConfig  # noqa: E402

WORDS = ("the model learns a low rank update of every weight matrix while the optimizer keeps its state "
         "in a projected space and the loss falls slowly over many steps with warmup cosine decay data "
         "tokens rows batch seed epoch python docstring module function class returns value error").split()


def make_documents(n: int, seed: int = 0) -> list[str]:
    """n distinct pseudo-English documents of 3 to 120 words (a few sentences each)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(3, 120)))
        docs.append(f"Document {i}: " + " ".join(words).capitalize() + ".")
    return docs


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's cache, even through the environment default."""
    monkeypatch.setenv("LOWRANK_LENS_CACHE", str(tmp_path / "env_cache"))


@pytest.fixture
def docs() -> list[str]:
    return make_documents(300)


@pytest.fixture
def jsonl_corpus(tmp_path: Path, docs: list[str]) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


@pytest.fixture
def make_cfg(tmp_path: Path):
    """Factory of small, fast DataConfigs: seq_len 32, 20% held out, up to 64 validation rows, tmp cache."""

    def make(source: str | Path, **kw) -> DataConfig:
        base = dict(source=str(source), cache_dir=str(tmp_path / "cache"), seq_len=32, val_fraction=0.2,
                    val_tokens=64 * 32)
        return DataConfig(**{**base, **kw})

    return make


@pytest.fixture(scope="session")
def bpe_tok():
    """A 512-token byte-level BPE trained on the synthetic corpus (trained once per session)."""
    from transformers import PreTrainedTokenizerFast

    from lowrank_lens.data.tokenizer import train_bpe

    tok = train_bpe(make_documents(300), 512)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=32)
