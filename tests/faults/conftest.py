"""The fault-injection suite (issue 11): bad configs and study files, bad CLI arguments, corrupt run files,
and faults of run folders (deletion rules, divergence, integrity, locks, interrupted saves, full disks).

Each module that needs a trained run gets one nano run (4 steps, checkpoints at 0, 2, 4), built once per
module and copied by the tests that damage it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lens_testutil import one_torch_thread

NANO_TRAINING = ["train.steps=4", "train.checkpoints=2"]


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def nano_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lowrank_lens.presets import build_config
    from lowrank_lens.train import train

    with one_torch_thread():
        return train(build_config("nano", "full-rank", NANO_TRAINING), tmp_path_factory.mktemp("faults"),
                     run_name="run")
