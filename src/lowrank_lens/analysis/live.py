"""Models in memory as analysis subjects: a Hugging Face causal LM (LLaMA, GPT-NeoX, GPT-2, ...) or a loaded
checkpoint of any method, analysed by the same metric code as a run folder, without writing it to disk.

A model becomes a `RunRef` whose checkpoints live in a `LiveContext` instead of files; the metrics see the
Context they always see (load, dense, batches), so their numbers equal those of the same weights analysed from
a run folder. Results are not cached (there is no file to hash); every parameter a metric perturbs is put back
bit for bit (maths/landscape.py restores from a copy) and the model's train/eval mode is restored after.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import DataConfig, RunConfig, TrainConfig
from ..data.cache import check_token_rows, load_token_rows
from ..errors import LensError
from ..imports.checks import descriptive_shape
from ..methods import get_method
from ..model.architectures import known_model_types
from ..runfolder.files import run_config_from_dict
from ..runfolder.loading import LoadedCheckpoint
from .context import Context, EvalSettings
from .subjects import CheckpointRef, RunRef

MEMORY = Path("<memory>")
"""The parent of every in-memory run's made-up folder: no file is ever read or written under it."""
TOKENS_FIX = "pass tokens=ROWS (an int array [N, T] of the model's token ids, -1 = masked, or an .npy path)"


@dataclass
class LiveModel:
    """One model (or checkpoint) to analyse in memory, with what the tables call it."""

    model: nn.Module | LoadedCheckpoint
    name: str
    step: int | None = None
    """The step the tables give it; None: a loaded checkpoint's own step, 0 for a module."""


def _hf_run_config(model: nn.Module, name: str) -> RunConfig:
    """The run config an import of this HF model would record (the `pretrained` plugin, its architecture)."""
    hf_config = getattr(model, "config", None)
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in known_model_types():
        raise LensError(f"{name}: {type(model).__name__} is not a Hugging Face causal LM of a known architecture "
                        f"({', '.join(known_model_types())}); pass one, a run folder, or a loaded checkpoint "
                        "(lowrank_lens.load_run(RUN).checkpoint(STEP))")
    shape = descriptive_shape(hf_config.to_dict())
    plugin = get_method("pretrained")
    cfg = RunConfig(scale="memory", method="pretrained", model=shape, data=DataConfig(), train=TrainConfig(steps=1),
                    method_cfg=plugin.Config(model_type=model_type),
                    notes=["in memory: analysed as passed; train/optim sections are placeholders"])
    d = cfg.to_dict()
    d["method_cfg"].update(plugin.resolve(cfg))
    return run_config_from_dict(d)


def loaded(live: LiveModel) -> LoadedCheckpoint:
    """The model as the metrics load a checkpoint: its method plugin, run config and step."""
    if isinstance(live.model, LoadedCheckpoint):
        ck = live.model
        if live.step is None or live.step == ck.step:
            return ck
        return LoadedCheckpoint(ck.model, ck.method, ck.cfg, {**ck.meta, "step": live.step}, ck.path)
    if not isinstance(live.model, nn.Module):
        raise LensError(f"{live.name}: expected a torch.nn.Module, a run folder or a loaded checkpoint, got "
                        f"{type(live.model).__name__}")
    cfg = _hf_run_config(live.model, live.name)
    method = get_method(cfg.method)(cfg.method_cfg, cfg)
    step = live.step or 0
    return LoadedCheckpoint(model=live.model, method=method, cfg=cfg, meta={"step": step},
                            path=MEMORY / live.name / f"step-{step}")


def live_runs(series: Sequence[Sequence[LiveModel]], method_labels: Sequence[str] | None = None,
              pad_id: int = 0) -> tuple[list[RunRef], dict[Path, LoadedCheckpoint]]:
    """One RunRef per series (its models are the run's checkpoints, in step order) and the checkpoints by path.

    A checkpoint of a run keeps its run's method, scale and seed in the tables. A model from elsewhere (an HF
    model in memory) has none: its series share seed 0 and one scale, so the cross-run metrics pair them, and
    each is its own 'method' (its name, or `method_labels`, which also label runs' checkpoints this way: a
    comparison of two models), so the pairs are not skipped as one method's.
    `pad_id`: the token that fills masked (-1) positions of the evaluation rows, as a run's data fingerprint
    records it."""
    runs, checkpoints = [], {}
    for i, models in enumerate(series):
        if not models:
            raise LensError("an empty list of models; give each name one model or a list of its checkpoints")
        cks = [loaded(m) for m in models]
        name, cfg = models[0].name, cks[0].cfg
        own = cfg.method != "pretrained" and not method_labels  # a run's checkpoint, labelled as its run
        label = method_labels[i] if method_labels else cfg.method if own else name
        steps = [c.step for c in cks]
        if len(set(steps)) != len(steps):
            raise LensError(f"{name}: two models at one step ({steps}); give each checkpoint its own step")
        refs = []
        for ck in sorted(cks, key=lambda c: c.step):
            path = MEMORY / name / f"step-{ck.step}"
            checkpoints[path] = ck
            refs.append(CheckpointRef(name, MEMORY / name, ck.step, path, label))
        plugin = type(cks[0].method)
        runs.append(RunRef(run_dir=MEMORY / name, run_id=name, method=label, scale=cfg.scale if own else "memory",
                           seed=cfg.train.seed if own else 0, checkpoints=refs,
                           data={"pad_id": pad_id}, has_dense_view=plugin.has_dense_view,
                           no_dense_reason=plugin.no_dense_reason, is_baseline=False,
                           vocab_size=cks[0].cfg.model.vocab_size))
    return runs, checkpoints


def token_rows(tokens: np.ndarray | str | Path | None, vocab_size: int | None) -> np.ndarray | None:
    """Evaluation rows from an array or an .npy path (read as every token file is), checked against the vocab."""
    if tokens is None:
        return None
    if isinstance(tokens, (str, Path)):
        return load_token_rows(tokens, vocab_size, fix=TOKENS_FIX)
    rows = np.asarray(tokens.detach().cpu() if isinstance(tokens, torch.Tensor) else tokens)
    check_token_rows(rows, vocab_size, "tokens", f"; {TOKENS_FIX}")
    if len(rows) == 0:
        raise LensError(f"tokens hold no rows; {TOKENS_FIX}")
    return rows


class LiveContext(Context):
    """A Context whose checkpoints are models in memory and whose evaluation rows were passed in."""

    def __init__(self, settings: EvalSettings, checkpoints: dict[Path, LoadedCheckpoint],
                 rows: np.ndarray | None) -> None:
        super().__init__(settings)
        self.checkpoints, self.given_rows = checkpoints, rows

    def rows(self, run: RunRef) -> np.ndarray:
        """The rows passed in, for every run (a run folder's val_tokens.npy only when none were)."""
        if self.given_rows is not None:
            return np.ascontiguousarray(self.given_rows[: self.settings.sequences])
        if run.run_dir.parent != MEMORY:
            return super().rows(run)
        raise LensError(f"{run.run_id}: no evaluation rows; {TOKENS_FIX}")

    def missing_rows(self, run: RunRef) -> str:
        if self.given_rows is not None:
            return ""
        if run.run_dir.parent != MEMORY:
            return super().missing_rows(run)
        return "" if self.given_rows is not None else f"no evaluation rows: {TOKENS_FIX}"

    def load(self, ckpt: CheckpointRef, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> LoadedCheckpoint:
        """The model itself when it already has the dtype and device asked for, else a converted copy (the
        caller's model is never cast or moved)."""
        if ckpt.path not in self.checkpoints:
            return super().load(ckpt, dtype, device)
        ck = self.checkpoints[ckpt.path]
        dtype = dtype or self.dtype
        device = torch.device(device) if device is not None else self.device
        first = next(ck.model.parameters())
        if first.dtype == dtype and first.device.type == device.type and \
                (device.index is None or first.device.index == device.index):
            return ck
        return self._cached((str(ckpt.path), "native", str(dtype), str(device)),
                            lambda: LoadedCheckpoint(copy.deepcopy(ck.model).to(device=device, dtype=dtype).eval(),
                                                     ck.method, ck.cfg, ck.meta, ck.path))


@contextmanager
def evaluating(models: Sequence[nn.Module]) -> Iterator[None]:
    """Every module in eval mode (no dropout) for the analysis, each one's own mode put back after."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training
