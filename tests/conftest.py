"""Test-wide settings: offline hub, a shared tokenizer/row cache for the session, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache per test session: the nano tokenizer and rows are built once, then reused,
    also by the subprocesses the end-to-end tests start (they inherit the environment)."""
    cache = tmp_path_factory.mktemp("lens-cache")
    os.environ["LOWRANK_LENS_CACHE"] = str(cache)
    return cache

