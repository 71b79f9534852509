"""`LensCallback`: the solution metrics on the live model while it trains, in any loop.

    lens = ll.LensCallback(metrics=("spectra", "update_spectra"), every=100, tokens=rows, out="lens.jsonl")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[lens])   # or:
    for step in range(steps): ...; lens.observe(model, step)                                    # any loop
    lens.results                                      # one DataFrame: ll.analyze's rows, one set per step
    ll.LensCallback(..., downstream="lens_mc", tokenizer=tok, downstream_options={"limit": 100})  # + lm-eval

Each observation runs the metrics through the Python API's code (analysis/frames.py, the CLI's runner), so a row
equals what `ll.analyze` gives for the same weights. The training does not see it: every parameter a metric
perturbs is restored bit for bit, each module's train/eval mode, the gradients and the python, numpy and torch
random states are put back, so a run's losses are the same with and without the callback (tested with a real
Trainer). Metrics of consecutive checkpoints (update_spectra, interpolation) compare with the previous
observation, kept as a copy on the CPU.

Under torch.distributed (DDP), rank 0 computes and the other ranks skip: no collective runs inside the callback,
so it cannot deadlock; the other ranks wait for rank 0 at their next gradient all-reduce.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from transformers import TrainerCallback

from .analysis.frames import analyze_live, chosen_metrics, eval_settings, metric_provenance, versions
from .analysis.live import LiveModel, live_runs, token_rows
from .atomic import write_json_atomic, write_text_atomic
from .downstream.evaluate import evaluate_model
from .errors import LensError
from .rng import kept_rng
from .runfolder.loading import LoadedCheckpoint
from .runfolder.log import LENS_FILE, parse_log, read_lens_rows

log = logging.getLogger("lowrank_lens")

DEFAULT_METRICS = ("spectra", "update_spectra", "landscape_random")
"""The cheap ones: weight and update spectra (stable and effective rank), a few-direction random landscape."""
DEFAULT_OPTIONS = {"landscape_random": {"directions": 2, "points": 7}}
SINKS = ("jsonl", "tensorboard", "wandb")
LIVE_KINDS = ("checkpoint", "consecutive")
"""What one model, or it and its previous observation, can be the subject of."""


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """What a computation on a live model could change, put back after: the global random states and the
    gradients (a metric that calls backward would add to them)."""
    # Each gradient tensor itself and a copy of its values (none when there is no gradient, as after zero_grad):
    # put back in place, so a DDP bucket view stays the same tensor.
    grads = [(p, p.grad, p.grad.detach().clone()) for p in model.parameters() if p.grad is not None]
    nones = [p for p in model.parameters() if p.grad is None]
    try:
        with kept_rng():
            yield
    finally:
        for p, tensor, values in grads:
            p.grad = tensor
            tensor.copy_(values)
        for p in nones:
            p.grad = None


class LensCallback(TrainerCallback):
    """The metrics every `every` optimizer steps, on the live model; a transformers TrainerCallback and, through
    `observe(model, step)`, a plain object for any loop."""

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS, every: int = 100, *,
                 tokens: np.ndarray | torch.Tensor | str | Path | None = None,
                 out: str | Path | None = None, sinks: Sequence[str] = ("jsonl",),
                 device: str = "auto", sequences: int = 64, batch_size: int = 16,
                 metric_options: Mapping[str, Mapping[str, Any]] | None = None, name: str = "live",
                 pad_id: int = 0, downstream: str | Sequence[str] | None = None, tokenizer: Any = None,
                 downstream_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise LensError(f"every must be an int >= 1 (observe each N optimizer steps), got {every!r}")
        if bad := sorted(set(sinks) - set(SINKS)):
            raise LensError(f"unknown lens sink(s) {bad}; choose from {', '.join(SINKS)}")
        if {"jsonl", "tensorboard"} & set(sinks) and out is None:
            raise LensError("the jsonl and tensorboard sinks need out=PATH.jsonl (the TensorBoard folder goes "
                            "beside it), or sinks=() to keep the results in memory only")
        if downstream and tokenizer is None:
            raise LensError("downstream evaluation in the lens needs the model's tokenizer: tokenizer=TOK")
        self.downstream = (downstream if isinstance(downstream, str) else ",".join(downstream)) if downstream else ""
        self.tokenizer, self.downstream_options = tokenizer, dict(downstream_options or {})
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        options = {**DEFAULT_OPTIONS, **(metric_options or {})}
        self.metrics = chosen_metrics(names, {k: v for k, v in options.items() if k in names})
        if bad := [m.name for m in self.metrics if m.subject_kind not in LIVE_KINDS]:
            raise LensError(f"the lens computes metrics of one model or of consecutive observations; {bad} need "
                            "other runs or a run's whole trajectory: compute them after training with ll.analyze")
        if tokens is None and (bad := [m.name for m in self.metrics if m.needs_tokens]):
            raise LensError(f"{bad} evaluate the model: pass tokens=ROWS (int token ids [N, T], -1 = masked)")
        self.every, self.name, self.sinks, self.pad_id = every, name, tuple(sinks), pad_id
        self.tokens = token_rows(tokens, None)  # a file read once, not at every observation
        self._updates = any(m.subject_kind == "consecutive" for m in self.metrics)  # a previous copy is needed
        self.out = Path(out) if out is not None else None
        self.settings = eval_settings(device, "auto", sequences, batch_size)
        self.rows: list[dict[str, Any]] = []
        self._previous: tuple[int, nn.Module | LoadedCheckpoint] | None = None
        self._tb: Any = None
        self._wandb: Any = None
        if "tensorboard" in self.sinks or "wandb" in self.sinks:
            self._open_trackers()

    # ---- any loop ------------------------------------------------------------------------------
    def observe(self, model: nn.Module | LoadedCheckpoint, step: int, force: bool = False) -> pd.DataFrame | None:
        """The metrics on `model` at `step` when step is a multiple of `every` (or `force`); None otherwise and
        on ranks other than 0. `model` is an HF causal LM, a DDP-wrapped one, or a LoadedCheckpoint (the
        toolkit's own methods)."""
        if not (force or step % self.every == 0):
            return None
        live = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        module = live.model if isinstance(live, LoadedCheckpoint) else live
        if any(_sharded(p) for p in module.parameters()):  # checked on every rank: all raise, none waits
            raise LensError("the lens sees sharded parameters (FSDP, DeepSpeed ZeRO-3), only this rank's part of "
                            "each matrix; observe a model whose weights are whole (DDP, one process), or train "
                            "with the toolkit's loop and train.lens, which gathers them")
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        with untouched(module):
            df = self._compute(live, step)
            self.remember(live, step)
        rows = df.to_dict("records")
        self.rows += rows
        self._write(rows, step)
        return df

    def _compute(self, live: nn.Module | LoadedCheckpoint, step: int) -> pd.DataFrame:
        one = [m for m in self.metrics if m.subject_kind == "checkpoint"]
        two = [m for m in self.metrics if m.subject_kind == "consecutive"]
        parts = []
        if one:
            runs, cks = live_runs([[LiveModel(live, self.name, step)]], pad_id=self.pad_id)
            parts.append(analyze_live(runs, cks, one, None, None, self.tokens, self.settings, False, None))
        if two and self._previous is not None and self._previous[0] < step:
            before, now = LiveModel(self._previous[1], self.name, self._previous[0]), LiveModel(live, self.name, step)
            runs, cks = live_runs([[before, now]], pad_id=self.pad_id)
            parts.append(analyze_live(runs, cks, two, None, None, self.tokens, self.settings, False, None))
        if self.downstream:  # lm-eval on the live model (uncached; its modes and random states put back)
            parts.append(pd.DataFrame(evaluate_model(live, self.tokenizer, self.downstream, name=self.name,
                                                     step=step, **self.downstream_options)))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def remember(self, model: nn.Module | LoadedCheckpoint, step: int) -> None:
        """Keep `model` as the observation at `step` for the next metrics of consecutive checkpoints, computing
        nothing: a resumed run's weights at its resumed step (rank 0 only)."""
        if self._updates and not (dist.is_initialized() and dist.get_rank() != 0):
            self._previous = (step, self._snapshot(model))

    def observed(self, step: int) -> bool:
        """Whether the out file holds rows of `step` (a resumed run's last observation, written before it died)."""
        return self.out is not None and any(r.get("step") == step for r in read_lens_rows(self.out))

    def truncate_after(self, step: int) -> None:
        """Drop the jsonl rows past `step` (a killed run's, which its resumed run computes again)."""
        if self.out is None or not self.out.is_file() or (dist.is_initialized() and dist.get_rank() != 0):
            return
        kept = [line for line, record in parse_log(self.out) if record["step"] <= step]
        write_text_atomic(self.out, "".join(line + "\n" for line in kept))

    @staticmethod
    def _snapshot(live: nn.Module | LoadedCheckpoint) -> nn.Module | LoadedCheckpoint:
        """A CPU copy of the weights for the next observation's metrics of consecutive checkpoints."""
        if isinstance(live, LoadedCheckpoint):
            return LoadedCheckpoint(copy.deepcopy(live.model).cpu(), live.method, live.cfg, live.meta, live.path)
        return copy.deepcopy(live).cpu()

    @property
    def results(self) -> pd.DataFrame:
        """Every observation's rows so far (the columns of ll.analyze's tables; `step` is the training step)."""
        return pd.DataFrame(self.rows)

    # ---- sinks ---------------------------------------------------------------------------------
    def scalars(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """'lens/<metric>/<column>' (downstream: 'lens/downstream/<task>/<column>') -> value of the numeric columns
        of this step's rows."""
        out = {}
        for row in rows:
            prefix = f"lens/{row['metric']}" + (f"/{row['task']}" if row.get("task") else "")
            for key, value in row.items():
                if key not in ("step", "seed", "step_from") and isinstance(value, (int, float)) and \
                        not isinstance(value, bool) and np.isfinite(value):
                    out[f"{prefix}/{key}"] = float(value)
        return out

    def provenance(self) -> dict[str, Any]:
        """How the series is computed (written beside it as <out>.settings.json): versions, each metric's config
        and version, the evaluation settings, the interval, the downstream tasks."""
        return {**versions(), "every": self.every,
                "eval": dataclasses.asdict(self.settings), "downstream": self.downstream,
                "downstream_options": self.downstream_options,
                "metrics": {m.name: metric_provenance(m) for m in self.metrics}}

    def _write(self, rows: list[dict[str, Any]], step: int) -> None:
        if "jsonl" in self.sinks:
            assert self.out is not None
            self.out.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out.with_suffix(".settings.json"), self.provenance())
            with self.out.open("a") as f:
                for row in rows:
                    f.write(json.dumps(row, default=float) + "\n")
        values = self.scalars(rows)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            if self._wandb.run is None:
                raise LensError("the wandb lens sink needs an active run (wandb.init, or the Trainer's report_to)")
            self._wandb.log({**values, "train/global_step": step})

    def _open_trackers(self) -> None:
        """The optional trackers' modules, checked when the callback is made, not at its first observation."""
        if "tensorboard" in self.sinks:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LensError("the tensorboard lens sink needs tensorboard: pip install tensorboard") from None
            assert self.out is not None
            self._tb = SummaryWriter(str(self.out.with_suffix("")) + "-tb")
        if "wandb" in self.sinks:
            try:
                import wandb
            except ImportError:
                raise LensError("the wandb lens sink needs wandb: pip install wandb") from None
            self._wandb = wandb

    # ---- transformers.Trainer ------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        if model is None:
            return
        if state.global_step == 0:  # the initial weights, the first 'previous'
            self._observe_in_trainer(model, state, force=True)
            return
        # resumed from a checkpoint: the killed run's later rows go; these weights are the next 'before'
        step = state.global_step
        self.truncate_after(step)
        if step % self.every == 0 and not self.observed(step):
            self._observe_in_trainer(model, state)
        elif step % self.every == 0:
            self.remember(model, step)

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        if model is not None and state.global_step % self.every == 0:
            self._observe_in_trainer(model, state)

    def _observe_in_trainer(self, model: nn.Module, state: Any, force: bool = False) -> None:
        df = self.observe(model, state.global_step, force=force)
        if df is not None and len(df):
            state.log_history.append({**self.scalars(df.to_dict("records")), "step": state.global_step})

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _sharded(p: torch.Tensor) -> bool:
    """A parameter that holds only this rank's shard: a DTensor (FSDP2), FSDP1's flat parameter, a ZeRO-3 one."""
    return getattr(p, "placements", None) is not None or getattr(p, "_is_flat_param", False) or hasattr(p, "ds_id")


def read_lens(path: str | Path) -> pd.DataFrame:
    """The rows a LensCallback (or train.lens, in <run>/lens.jsonl) wrote, as one DataFrame (ll.analyze's
    columns plus the training step); a run folder stands for its lens.jsonl."""
    path = Path(path)
    if not (path / LENS_FILE if path.is_dir() else path).is_file():
        raise LensError(f"{path} holds no lens series; pass a LensCallback's out= file or a run trained with "
                        "train.lens")
    return pd.DataFrame(read_lens_rows(path))
