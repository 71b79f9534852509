"""Tiny trained runs of every registered method, shared by the metric tests of one session.

nano shapes (hidden 64, 2 layers, vocab 512), 12 steps, checkpoints at 0/4/8/12, 16 validation rows:
seconds to train, and every subject kind (checkpoint, consecutive, cross, reference, run) exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank_lens.methods import method_names
from lowrank_lens.presets import build_config
from lowrank_lens.train import train

TINY = ["train.steps=12", "train.checkpoints=3", "train.log_every=4", "train.eval_every=12"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{method: run_dir} for every registered method (same data, same seed)."""
    out = tmp_path_factory.mktemp("tiny-runs")
    return {m: train(build_config("nano", m, TINY), out) for m in method_names()}
