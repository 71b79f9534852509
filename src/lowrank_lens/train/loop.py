"""The training loop. It calls the method's hooks and never names a method.

One update at step s (s = updates done so far):
  rows    = the rank's slice of the global batch at s      (a function of the data seed and s)
  loss    = summed NLL / targets in the GLOBAL batch       (token-weighted, independent of world size)
  lr      = optim.lr * method.lr_multiplier(s)
  update, then method.after_step(s + 1, ...); validate / checkpoint / log at s + 1 when due.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..callback import LensCallback, untouched
from ..config import RunConfig
from ..data import DataBundle, to_model_inputs
from ..distributed import DistEnv
from ..errors import TrainingDiverged
from ..evaluation import evaluate, token_nll
from ..methods.base import Method
from ..runfolder.checkpoint import RESUME_DIR, nonfinite_tensors, save_checkpoint, step_dir_name
from ..runfolder.loading import LoadedCheckpoint, model_from_state
from . import stop
from .logs import RunLogger, format_train_line, format_val_line
from .memory import measure_memory
from .parallel import Replicated

log = logging.getLogger("lowrank_lens")

# With train.on_nonfinite=skip, this many skipped updates in a row stop the run all the same: the weights
# or the data are broken, and skipping for ever would only burn compute.
MAX_CONSECUTIVE_SKIPS = 10


def _micro_seed(seed: int, step: int, micro_index: int) -> int:
    return (seed * 1_000_003 + step) * 10_007 + micro_index


@dataclass
class TrainState:
    """What the loop carries between steps and what a checkpoint must restore."""

    step: int = 0
    tokens: int = 0  # unmasked target tokens trained on, all ranks (skipped updates not counted)
    skipped: int = 0  # updates skipped for a non-finite loss or gradient (train.on_nonfinite=skip)
    consecutive_skips: int = 0  # not saved: a resumed run starts a new count
    memory: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trainer:
    cfg: RunConfig
    run_dir: Path
    env: DistEnv
    method: Method
    model: torch.nn.Module  # the unwrapped model (hooks and checkpoints see this one)
    optimizer: torch.optim.Optimizer
    data: DataBundle
    logger: RunLogger
    ckpt_steps: list[int]
    state: TrainState = field(default_factory=TrainState)
    parallel: Replicated | None = None  # how the model is spread over ranks (None: one process)
    last_saved: int = -1  # step of the newest checkpoint written (or resumed from); -1 before step 0
    lens: LensCallback | None = None  # train.lens: the metrics on the live model every train.lens_every steps

    def __post_init__(self) -> None:
        if self.parallel is None:
            self.parallel = Replicated(self.env)
        if self.parallel.net is None:
            self.parallel.wrap(self.model)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.precision == "bf16-mixed":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- one update ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        t, env = self.cfg.train, self.env
        net = self.parallel.net
        step = self.state.step
        t0 = time.perf_counter()
        rows = self.data.train.rows(step, t.total_batch_size, env.rank, env.world)  # [B/W, T]
        input_ids, labels = to_model_inputs(rows, self.data.pad_id)
        input_ids, labels = input_ids.to(env.device), labels.to(env.device)
        data_s = time.perf_counter() - t0
        n_global = int(env.sum([(labels[:, 1:] != -100).sum().item()])[0])

        mult = self.method.lr_multiplier(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * mult

        micro = t.micro_batch_size
        n_micro = input_ids.shape[0] // micro
        nll_total = 0.0
        for k in range(n_micro):
            # Stochastic layers (dropout) draw from a seed fixed by (seed, step, global micro-batch index):
            # the same sample sees the same mask on 1 or N processes, and after a resume.
            torch.manual_seed(_micro_seed(t.seed, step, env.rank * n_micro + k))
            sl = slice(k * micro, (k + 1) * micro)
            last = k == n_micro - 1
            sync = contextlib.nullcontext() if last else self.parallel.no_sync()
            with sync:
                with self.autocast():
                    nll, _ = token_nll(net, input_ids[sl], labels[sl])
                # DDP and FSDP2 average gradients over ranks; scaling by world makes it sum(NLL) / n_global.
                (nll * (env.world / max(n_global, 1))).backward()
            nll_total += float(nll.detach())

        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.optim.grad_clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))
        else:
            gnorm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        # Loss and gradient norm are global (summed / all-reduced), so every rank takes the same decision.
        loss = float(env.sum([nll_total])[0]) / max(n_global, 1)
        skip = self._check_finite(step + 1, loss, gnorm)
        if not skip:
            self.optimizer.step()
            if not self.state.memory:  # optimizer state exists only after the first step
                self.state.memory = {**measure_memory(self.model, self.optimizer, env.device),
                                     "world_size": env.world, "sharded": self.parallel.lockstep}
            self.state.tokens += n_global
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step = step + 1
        extras = self.method.after_step(self.state.step, self.model, self.optimizer)
        return {"loss": loss, "lr": self.cfg.optim.lr * mult, "grad_norm": gnorm, "data_s": data_s,
                "n_tokens": n_global, **({"skipped_steps": self.state.skipped} if self.state.skipped else {}),
                **extras}

    def _check_finite(self, step: int, loss: float, gnorm: float) -> bool:
        """Whether to skip the update of `step`: never when loss and gradient norm are finite. Otherwise the
        run stops with one line (train.on_nonfinite=stop, the default), or skips the update
        (train.on_nonfinite=skip) unless MAX_CONSECUTIVE_SKIPS updates in a row were already skipped."""
        if math.isfinite(loss) and math.isfinite(gnorm):
            self.state.consecutive_skips = 0
            return False
        what = f"loss {loss}, gradient norm {gnorm}"
        if self.cfg.train.on_nonfinite == "skip" and self.state.consecutive_skips < MAX_CONSECUTIVE_SKIPS:
            self.state.skipped += 1
            self.state.consecutive_skips += 1
            if self.env.is_main:
                log.warning(f"step {step}: non-finite {what}; update skipped ({self.state.skipped} so far)")
            return True
        in_a_row = f" after {MAX_CONSECUTIVE_SKIPS} skipped updates in a row" if self.state.consecutive_skips else ""
        raise TrainingDiverged(f"training diverged at step {step}{in_a_row} ({what}); no checkpoint is written "
                               f"after step {self.last_saved}, which is intact — lower optim.lr (now "
                               f"{self.cfg.optim.lr:g}) or set train.on_nonfinite=skip to skip such updates", step)

    # ---- validation and checkpoints ------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        bs = self.cfg.train.eval_batch_size or self.cfg.train.micro_batch_size
        res = evaluate(self.model, self.data.val_rows, self.data.pad_id, bs, self.env, self.autocast(),
                       lockstep=self.parallel.lockstep)
        rec = {"kind": "val", "step": self.state.step, "tokens": self.state.tokens, **res}
        self.logger.write(rec)
        if self.env.is_main:
            log.info(format_val_line(rec))
        return res

    def save(self, val: dict[str, float] | None, rolling: bool = False) -> None:
        step = self.state.step
        # Whole tensors (gathered under FSDP2: every rank takes part), so the checkpoint is in the one format.
        model_state = self.parallel.model_state(self.model)
        optimizer_state = self.parallel.optimizer_state(self.optimizer)
        # Every rank checks (the same whole weights), so all stop together instead of waiting on rank 0.
        bad = nonfinite_tensors(model_state)
        losses = [v for k, v in (val or {}).items() if "loss" in k]  # a huge finite loss may give ppl = inf
        if bad or not all(math.isfinite(v) for v in losses):
            detail = f"non-finite weights ({', '.join(bad[:3])})" if bad else f"a non-finite validation ({val})"
            raise TrainingDiverged(f"training diverged by step {step}: {detail}; the checkpoint was not written "
                                   f"and step {self.last_saved} is intact — lower optim.lr (now "
                                   f"{self.cfg.optim.lr:g})", step)
        self.last_saved = step
        if not self.env.is_main:
            return
        meta = {"step": step, "tokens": self.state.tokens, "method": self.cfg.method,
                "method_cfg": self.cfg.to_dict()["method_cfg"], "seed": self.cfg.train.seed,
                "data_seed": self.cfg.data.shuffle_seed, "precision": self.cfg.train.precision,
                "val": val or {}, "memory": self.state.memory}
        resume = {"step": step, "tokens": self.state.tokens, "skipped": self.state.skipped,
                  "optimizer": optimizer_state,
                  "rng_cpu": torch.get_rng_state(),
                  "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                  "trackers": self.logger.trackers}  # the sinks' runs, which a resumed run continues
        name = RESUME_DIR if rolling else step_dir_name(step)
        save_checkpoint(self.run_dir / "ckpt" / name, model_state, meta, resume)

    def restore(self, resume: dict[str, Any]) -> None:
        self.parallel.load_optimizer_state(self.optimizer, resume["optimizer"])
        torch.set_rng_state(resume["rng_cpu"])
        if resume["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume["rng_cuda"])
        self.state.step, self.state.tokens = int(resume["step"]), int(resume["tokens"])
        self.state.skipped = int(resume.get("skipped", 0))  # absent in checkpoints of older versions
        self.last_saved = self.state.step

    def observe_lens(self, step: int, remember: bool = False) -> None:
        """The lens at `step` (or, `remember`, only its copy for the next update metrics). Rank 0 computes on the
        model itself (one process, DDP) or, under FSDP2, on a copy of the whole weights every rank gathers."""
        assert self.lens is not None
        with untouched(self.model):  # the copy's rebuild draws its init; the training's random stream stays
            if self.parallel.lockstep:
                state = self.parallel.model_state(self.model)
                model = model_from_state(self.method, state, self.run_dir / "ckpt" / step_dir_name(step)) \
                    if self.env.is_main else None
            else:
                model = self.model
            if not self.env.is_main:
                return
            live = LoadedCheckpoint(model, self.method, self.cfg, {"step": step},
                                    self.run_dir / "ckpt" / step_dir_name(step))
            if remember:
                self.lens.remember(live, step)
            else:
                self.lens.observe(live, step, force=True)

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        t = self.cfg.train
        last_val: dict[str, float] = {}
        interval_t, interval_tok, step_times = time.perf_counter(), 0, []
        while self.state.step < t.steps:
            t0 = time.perf_counter()
            rec = self.train_step()
            step_times.append(time.perf_counter() - t0)
            interval_tok += rec["n_tokens"]
            step = self.state.step
            if step % t.log_every == 0 or step == t.steps:
                elapsed = time.perf_counter() - interval_t
                rec = {"kind": "train", "step": step, "tokens": self.state.tokens,
                       "tok_per_s": interval_tok / max(elapsed, 1e-9), **rec}
                rec.pop("n_tokens")
                self.logger.write(rec)
                if self.env.is_main:
                    eta = float(np.mean(step_times[-50:])) * (t.steps - step)
                    log.info(format_train_line(rec, t.steps, eta))
                interval_t, interval_tok = time.perf_counter(), 0
            due_ckpt = step in self.ckpt_steps
            if due_ckpt or (t.eval_every and step % t.eval_every == 0):
                last_val = self.validate()
            if due_ckpt:
                self.save(last_val)
            elif t.resume_every and step % t.resume_every == 0:
                self.save(last_val, rolling=True)
            if due_ckpt or t.resume_every:
                interval_t = time.perf_counter()  # keep checkpoint time out of tok/s
            if self.lens is not None and step % self.lens.every == 0:
                self.observe_lens(step)
            if self.state.step < t.steps and stop.should_stop(self.env):
                if self.last_saved != step:
                    self.save(last_val, rolling=True)
                raise stop.StopRequested(step)
        return last_val
