"""Load a saved checkpoint back into a working model, in its own parameterization or as a plain LLaMA.

Readers of checkpoints (analysis, downstream evaluation, reports) go through here, so a checkpoint of any
method opens the same way and none of them needs the data pipeline or an optimizer:

    ck = load_checkpoint("runs/micro-cola-seed0/ckpt/step_000150")
    ck.model          # the trained parameterization (CoLA factors, SLTrain sparse + low-rank, LoRA + W0)
    dense_model(ck)   # a plain LlamaForCausalLM with each target layer's effective W, or None for CoLA
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaForCausalLM

from ..config import RunConfig
from ..errors import LensError
from ..methods import get_method
from ..methods.base import Method
from ..model import build_model
from .checkpoint import complete_checkpoints, load_model_state, read_meta


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    method: Method
    cfg: RunConfig
    meta: dict[str, Any]
    path: Path

    @property
    def run_dir(self) -> Path:
        return self.path.parent.parent

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories: each path is a run (it has config.json) or a folder of runs."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            out.append(p)
            continue
        runs = sorted(d for d in p.iterdir() if (d / "config.json").is_file()) if p.is_dir() else []
        if not runs:
            raise LensError(f"{p} is neither a run directory (with config.json) nor a folder of runs")
        out.extend(runs)
    return out


def resolve_checkpoint(path: str | Path, step: int | str | None = None) -> Path:
    """A checkpoint directory from a checkpoint path, or from a run directory plus a step ('final' = last)."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    ckpts = [(s, c) for s, c in complete_checkpoints(p) if c.name != "resume"]
    if not ckpts:
        raise LensError(f"{p} holds no complete checkpoint; pass a run directory (runs/<run-id>) or a "
                        f"checkpoint directory (runs/<run-id>/ckpt/step_*)")
    if step is None or step == "final":
        return ckpts[-1][1]
    by_step = dict(ckpts)
    if int(step) not in by_step:
        raise LensError(f"{p} has no checkpoint at step {step}; it has steps {sorted(by_step)}")
    return by_step[int(step)]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    verify: bool = False) -> LoadedCheckpoint:
    """The model of a checkpoint in its trained parameterization, in eval mode, on `device` / `dtype`.

    The model is rebuilt from the run's saved config (same init seed and the method's surgery, so buffers
    such as SLTrain's sparse support match), then every saved tensor is loaded strictly.
    """
    from .run import load_run_config

    ckpt = resolve_checkpoint(path)
    cfg = load_run_config(ckpt.parent.parent)
    meta = read_meta(ckpt)
    model = build_model(cfg.model, seed=cfg.train.seed)
    method = get_method(cfg.method)(cfg.method_cfg, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = method.prepare_model(model)
    state = load_model_state(ckpt, verify=verify)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LensError(f"checkpoint {ckpt} does not fit its run's config (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); was config.json edited after training?")
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return LoadedCheckpoint(model=model.eval(), method=method, cfg=cfg, meta=meta, path=ckpt)


def dense_state(ck: LoadedCheckpoint) -> dict[str, torch.Tensor] | None:
    """State dict of a plain LLaMA whose target layers hold the method's effective W; None without one."""
    dense = ck.method.dense_weights(ck.model)
    if dense is None:
        return None
    own = ck.model.state_dict()
    plain_keys = build_model(ck.cfg.model, device="meta").state_dict().keys()
    out: dict[str, torch.Tensor] = {}
    for key in plain_keys:
        module = key.rpartition(".")[0]
        if key.endswith(".weight") and module in dense:
            out[key] = dense[module].detach()
        elif key in own:
            out[key] = own[key].detach()
        else:
            raise LensError(f"cannot build a dense view of {ck.path}: no tensor for {key}")
    return out


def dense_model(ck: LoadedCheckpoint) -> LlamaForCausalLM | None:
    """A plain LlamaForCausalLM equivalent to the checkpoint, or None when no dense view exists (CoLA)."""
    state = dense_state(ck)
    if state is None:
        return None
    ref = next(iter(state.values()))
    model = build_model(ck.cfg.model)  # on CPU: rotary buffers are not in the state dict
    model.load_state_dict(state)
    return model.to(device=ref.device, dtype=ref.dtype).eval()
