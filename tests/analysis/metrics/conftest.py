"""Tiny trained runs of the registered methods, shared by the metric tests of one session.

nano shapes (hidden 64, 2 layers, vocab 512), 12 steps, checkpoints at 0/4/8/12, 16 validation rows:
seconds to train, and every subject kind (checkpoint, consecutive, cross, reference, run) exists.
A run is trained the first time a test asks for its method. `distinct_runs` holds one run per distinct
parameterization (the stored tensors' names, and whether a dense view exists): the optimizer-only methods
(GaLore, Fira, APOLLO, SPAM, ...) store exactly what full-rank stores, so a metric, which reads only the
stored tensors and the dense view, cannot tell them apart; a new method with a new layer is covered at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from lowrank_lens.methods import get_method, method_names
from lowrank_lens.model import build_model
from lowrank_lens.presets import build_config
from lowrank_lens.train import train

TINY = ["train.steps=12", "train.checkpoints=3", "train.log_every=4", "train.eval_every=12"]


class LazyRuns(Mapping[str, Path]):
    """{method: run_dir}; each run is trained (same data, same seed) when first looked up."""

    def __init__(self, out: Path) -> None:
        self.out, self._runs = out, {}

    def __getitem__(self, method: str) -> Path:
        if method not in method_names():
            raise KeyError(method)
        if method not in self._runs:
            self._runs[method] = train(build_config("nano", method, TINY), self.out)
        return self._runs[method]

    def __iter__(self) -> Iterator[str]:
        return iter(method_names())

    def __len__(self) -> int:
        return len(method_names())


def parameterization(method: str) -> tuple:
    """What a metric can see of a method: its stored tensor names (block index dropped) and dense view."""
    cfg = build_config("nano", method, TINY)
    plugin = get_method(method)(cfg.method_cfg, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = plugin.prepare_model(build_model(cfg.model, seed=0))
    names = sorted({re.sub(r"\.\d+\.", ".N.", k) for k in model.state_dict()})
    return tuple(names), plugin.has_dense_view


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> LazyRuns:
    return LazyRuns(tmp_path_factory.mktemp("tiny-runs"))


@pytest.fixture(scope="session")
def distinct_runs(tiny_runs: LazyRuns) -> dict[str, Path]:
    """{method: run_dir}, the first registered method (baseline first) of each distinct parameterization."""
    firsts: dict[tuple, str] = {}
    for m in sorted(method_names(), key=lambda m: not get_method(m).is_baseline):
        firsts.setdefault(parameterization(m), m)
    return {m: tiny_runs[m] for m in firsts.values()}
