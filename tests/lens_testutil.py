"""Helpers shared by tests: `python -m lowrank_lens` subprocesses, single-threaded torch."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def cli_env() -> dict[str, str]:
    """Environment for `python -m lowrank_lens` subprocesses (inherits the session's data cache)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch single-threaded inside, restored after: on the shared 2-core machine, 2-thread intra-op
    parallelism under load from other processes made a tiny-model HVP ~70x slower (0.07 s -> 5 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
