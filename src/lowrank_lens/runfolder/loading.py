"""Load a saved checkpoint back into a working model, in its own parameterization or as a plain LLaMA.

Readers of checkpoints (analysis, downstream evaluation, reports) go through here, so a checkpoint of any
method opens the same way and none of them needs the data pipeline or an optimizer:

    ck = load_checkpoint("runs/micro-cola-seed0/ckpt/step_000150")
    ck.model          # the trained parameterization (CoLA factors, SLTrain sparse + low-rank, LoRA + W0)
    dense_model(ck)   # a plain LlamaForCausalLM with each target layer's effective W, or None for CoLA
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import LlamaForCausalLM

from ..config import RunConfig
from ..errors import LensError
from ..methods import get_method
from ..methods.base import Method
from ..model import build_model
from ..tempdirs import is_hidden, sweep_stale
from .checkpoint import complete_checkpoints, load_model_state, read_meta
from .files import load_run_config

log = logging.getLogger("lowrank_lens")


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
        for done in sweep_stale(p):  # an import or report a killed process left half-built
            log.info(f"{p}: {done}")
        # hidden folders are never runs: an import being built (.tmp-NAME-XXXX) is not one yet
        runs = sorted(d for d in p.iterdir() if (d / "config.json").is_file() and not is_hidden(d)) \
            if p.is_dir() else []
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
                    verify: bool = True) -> LoadedCheckpoint:
    """The model of a checkpoint in its trained parameterization, in eval mode, on `device` / `dtype`.

    The model is rebuilt from the run's saved config (same init seed and the method's surgery, so buffers
    such as SLTrain's sparse support match), then every saved tensor is loaded strictly.
    """

    ckpt = resolve_checkpoint(path)
    cfg = load_run_config(ckpt.parent.parent)
    meta = read_meta(ckpt)
    method = get_method(cfg.method)(cfg.method_cfg, cfg)
    model = model_from_state(method, load_model_state(ckpt, verify=verify), ckpt)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return LoadedCheckpoint(model=model.eval(), method=method, cfg=cfg, meta=meta, path=ckpt)


def model_from_state(method: Method, state: dict[str, torch.Tensor], ckpt: Path) -> torch.nn.Module:
    """The method's model with the saved tensors `state` (of the checkpoint folder `ckpt`, or of a live run's
    folder for the in-training lens): rebuilt from the run's config (same init seed and surgery, so buffers such
    as SLTrain's sparse support match), every tensor loaded strictly."""
    reader = method.reader
    model = reader.base_model(ckpt.parent.parent)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(method.run.train.seed)
        model = method.prepare_model(model)
    state = reader.adapt_state(state)
    expected = reader.state_shapes(model)
    _check_fit(ckpt, expected, {k: v.shape for k, v in state.items()})
    # strict unless the method stores fewer tensors than the module has (tied weights, stored once)
    model.load_state_dict(state, strict=len(expected) == len(model.state_dict()))
    return model


def _check_fit(ckpt: Path, expected: Mapping[str, Sequence[int]], saved: Mapping[str, Sequence[int]]) -> None:
    """LensError unless the saved tensors are exactly those of the model the run's config builds (names and
    shapes): load_state_dict would raise a RuntimeError for a shape and silently skip names under strict=False."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    wrong = [f"{k} saved {list(saved[k])}, config {list(expected[k])}" for k in expected
             if k in saved and tuple(saved[k]) != tuple(expected[k])]
    problems = [f"{what} {', '.join(items[:2])}{' ...' if len(items) > 2 else ''}" for what, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape:", wrong)) if items]
    if problems:
        raise LensError(f"checkpoint {ckpt}: model.safetensors does not fit the run's config.json "
                        f"({'; '.join(problems)}); one of them was edited after training — restore it, or "
                        f"delete this checkpoint")


def check_checkpoint_fits(cfg: RunConfig, ckpt: Path) -> None:
    """Before a resume loads `ckpt`: the same check as load_checkpoint, from the safetensors header alone
    (no weight is read) against the model `cfg` builds on the meta device. A header that cannot be read is
    left to load_model_state, whose message covers a damaged file."""
    try:
        with safe_open(str(Path(ckpt) / "model.safetensors"), framework="pt") as f:
            saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    except (SafetensorError, OSError, ValueError):
        return
    method = get_method(cfg.method)(cfg.method_cfg, cfg)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = method.prepare_model(build_model(cfg.model, device="meta"))
    except (NotImplementedError, RuntimeError):  # a surgery that needs real data: build it on the CPU
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            model = method.prepare_model(build_model(cfg.model, seed=cfg.train.seed))
    _check_fit(Path(ckpt), {k: v.shape for k, v in model.state_dict().items()}, saved)


def parse_device(device: str, option: str = "--device") -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' as a torch.device; anything else,
    CUDA where torch sees no GPU, or a GPU index this machine lacks is one LensError naming `option`. Every
    command and reader checks its device here, before any work."""
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise LensError(f"{option} {device!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise LensError(f"{option} {device!r} asks for a GPU, but torch {torch.__version__} sees no CUDA device "
                        f"here; use --device cpu (or auto)")
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise LensError(f"{option} {device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return torch.device(text)


def dense_state(ck: LoadedCheckpoint) -> dict[str, torch.Tensor] | None:
    """State dict of a plain LLaMA whose target layers hold the method's effective W; None without one
    (the own state of a model that is its own dense view, dense_module)."""
    if ck.method.reader.dense_module(ck.model) is not None:
        return {k: v.detach() for k, v in ck.model.state_dict().items()}
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
    own = ck.method.reader.dense_module(ck.model)
    if own is not None:
        return own
    state = dense_state(ck)
    if state is None:
        return None
    ref = next(iter(state.values()))
    model = build_model(ck.cfg.model)  # on CPU: rotary buffers are not in the state dict
    model.load_state_dict(state)
    return model.to(device=ref.device, dtype=ref.dtype).eval()
