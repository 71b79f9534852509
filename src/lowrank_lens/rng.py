"""The global random states (python, numpy, torch CPU and CUDA) kept across a computation that draws or seeds
them (an lm-eval evaluation, the in-training lens), so a training loop's random stream continues as if it had
not run."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """The global random states (python, numpy, torch's CPU generator and, once CUDA is initialised, every CUDA
    device's) put back on exit, so seeding an evaluation leaves a training loop's random stream as it was."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
