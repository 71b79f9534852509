"""Tiny trained runs of every method for the downstream tests, and single-threaded torch.

The runs are nano shapes (hidden 64, 2 layers, vocab 512) trained for 8 steps: seconds to train, enough to
check that every method's checkpoint runs through lm-evaluation-harness unchanged. The tests need the
optional `[eval]` extra (lm-eval with accelerate); without it they are skipped (in CI they fail).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lens_testutil import one_torch_thread, require_package

require_package("lm_eval", "downstream tests need the [eval] extra: pip install -e '.[eval]'", module_level=True)
require_package("accelerate", "downstream tests need the [eval] extra: pip install -e '.[eval]'",
                module_level=True)

from lowrank_lens.methods import method_names  # noqa: E402
from lowrank_lens.presets import build_config  # noqa: E402
from lowrank_lens.train import train  # noqa: E402

NANO = ["train.steps=8", "train.checkpoints=1"]


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def nano_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{method: run_dir} for every registered method (same data and seed, 8 steps)."""
    out = tmp_path_factory.mktemp("downstream-runs")
    with one_torch_thread():
        return {m: train(build_config("nano", m, NANO), out) for m in method_names()}
