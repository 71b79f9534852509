"""`Run`: one run folder read from Python (its config, its training log as a DataFrame, its checkpoints),
for notebooks and the Python API (`lowrank_lens.load_run`). It only reads; nothing in the folder changes.

    run = load_run("runs/micro-galore-seed0")
    run.config.optim.lr, run.steps            # the learning rate, the steps of its checkpoints
    run.log[["step", "loss"]]                 # pandas.DataFrame of the training log's train rows
    ck = run.checkpoint()                     # the final checkpoint: ck.model, ck.method, ck.cfg
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from ..config import RunConfig
from ..errors import LensError
from .checkpoint import complete_checkpoints
from .files import load_run_config, method_label, read_run_json
from .loading import LoadedCheckpoint, load_checkpoint, parse_device
from .log import read_log


@dataclass(frozen=True)
class Run:
    """A run folder (made by `train`, `import` or a study)."""

    path: Path

    @cached_property
    def config(self) -> RunConfig:
        """The resolved run config (config.json), validated as every reader validates it."""
        return load_run_config(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        """The method as tables name it (an imported run's label)."""
        return method_label(read_run_json(self.path))

    @property
    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (the resume state is not one)."""
        return [step for step, path in complete_checkpoints(self.path) if path.name != "resume"]

    def log_rows(self, kind: str | None = "train") -> pd.DataFrame:
        """The training log's rows of one kind ('train', 'val', ...; None: every row) as a DataFrame."""
        return pd.DataFrame(read_log(self.path, kind))

    @property
    def log(self) -> pd.DataFrame:
        """The training rows of log.jsonl (step, loss, lr, ...)."""
        return self.log_rows("train")

    def checkpoint(self, step: int = -1, device: str = "cpu", dtype: torch.dtype | None = None) -> LoadedCheckpoint:
        """The checkpoint at `step` (-1: the last) in its method's own parameterization, on `device`."""
        saved = {s: p for s, p in complete_checkpoints(self.path) if p.name != "resume"}  # one listing
        if not saved:
            raise LensError(f"run {self.path} has no complete checkpoint yet; train it first")
        chosen = max(saved) if step == -1 else step
        if chosen not in saved:
            raise LensError(f"run {self.path} has no checkpoint at step {step}; it has {sorted(saved)}")
        return load_checkpoint(saved[chosen], parse_device(device, "device"), dtype)


def load_run(path: str | Path) -> Run:
    """The run folder at `path` (a LensError when it is not one)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise LensError(f"{folder} is not a run folder (it has no config.json); pass a folder made by "
                        "lowrank-lens train, import or study")
    run = Run(folder)
    run.config  # noqa: B018  (a config that does not read is an error now, not at first use)
    return run
