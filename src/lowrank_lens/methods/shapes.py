"""The model's matrices and a method's memory, from the run config alone (no model is built).

Config checks (`Method.check_config`) and memory closed forms (`Method.footprint`) run on every resolve and
before anything is allocated (train/fits.py), so they read shapes from this table of what model/llama.py builds
instead of building it. docs/memory.md defines the symbols; benchmarks/bench_memory.py compares every
footprint with the tensors it measures.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from ..config import ModelConfig, RunConfig
from ..errors import LensError


@dataclass(frozen=True)
class Footprint:
    """What a method holds after one optimizer step, in elements, as a function of the run config: the
    closed form that benchmarks/bench_memory.py compares with the tensors it measures (docs/memory.md)."""

    trainable: tuple[int, ...]
    """numel of every trainable parameter tensor (each has a gradient of its size)."""
    frozen: tuple[int, ...] = ()
    """numel of every frozen parameter tensor (no gradient, no optimizer state)."""
    buffers: tuple[int, ...] = ()
    """numel of every buffer the method adds to the model (not the model's own, e.g. RoPE's)."""
    buffer_bytes: int = 0
    """Bytes of those buffers."""
    state: tuple[dict[str, int], ...] = ()
    """Optimizer-state elements per key (tensors only), one dict per parameter group, in group order."""
    state_bytes: int = 0
    """Bytes of the whole optimizer state."""
    replicated_state: tuple[int, ...] = ()
    """Indices of the state groups an optimizer keeps whole on every rank under FSDP2 (GaLore's projected
    moments and basis); every other state tensor of a parameter's shape is sharded with it. Torch AdamW's
    per-tensor `step` counter is never sharded."""


def model_modules(model: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{module name: (kind, weight shape)} of the model that model/llama.py builds, without building it
    (config checks run on every resolve and must not import transformers). Kinds: 'linear' (weight
    out x in), 'embedding' (vocab x hidden), 'norm' (hidden,), 'other' (no weight). A test compares this
    table with the named_modules of a meta-device model."""
    h, i, v = model.hidden_size, model.intermediate_size, model.vocab_size
    out: dict[str, tuple[str, tuple[int, ...]]] = {
        "": ("other", ()), "model": ("other", ()), "model.embed_tokens": ("embedding", (v, h)),
        "model.layers": ("other", ()), "model.norm": ("norm", (h,)), "model.rotary_emb": ("other", ()),
        "lm_head": ("linear", (v, h))}
    for n in range(model.num_layers):
        b = f"model.layers.{n}"
        out.update({b: ("other", ()), f"{b}.self_attn": ("other", ()), f"{b}.mlp": ("other", ()),
                    f"{b}.mlp.act_fn": ("other", ()), f"{b}.input_layernorm": ("norm", (h,)),
                    f"{b}.post_attention_layernorm": ("norm", (h,)),
                    f"{b}.mlp.gate_proj": ("linear", (i, h)), f"{b}.mlp.up_proj": ("linear", (i, h)),
                    f"{b}.mlp.down_proj": ("linear", (h, i))})
        out.update({f"{b}.self_attn.{p}_proj": ("linear", (h, h)) for p in "qkvo"})
    return out


def target_matrices(model: ModelConfig, patterns: tuple[str, ...], linear_only: bool) -> dict[str, tuple[int, int]]:
    """{name: (out, in)} of the modules `patterns` select; LensError when a pattern selects nothing or
    selects a module without a weight matrix (a norm, a block), or a non-Linear where `linear_only`."""
    modules = model_modules(model)
    allowed = ("linear",) if linear_only else ("linear", "embedding")
    found: dict[str, tuple[int, int]] = {}
    for pat in patterns:
        hits = [n for n in modules if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise LensError(f"method.targets pattern {pat!r} matches no module; module names look like "
                            f"'model.layers.0.self_attn.q_proj'")
        for name in hits:
            kind, shape = modules[name]
            if kind not in allowed:
                raise LensError(f"method.targets pattern {pat!r} selects {name or 'the whole model'} ({kind}), "
                                f"not a {' or '.join(allowed)} weight matrix; narrow it, e.g. '*.mlp.up_proj'")
            found[name] = (shape[0], shape[1])
    return found


def model_parameters(model: ModelConfig, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """{module name: numel of its weight} of the model's parameter tensors (no biases: model/llama.py has
    none), leaving out the modules named in `exclude` (a method's targets, whose weights it replaces)."""
    return {name: math.prod(shape) for name, (kind, shape) in model_modules(model).items()
            if kind != "other" and name not in exclude}


def param_bytes(run: RunConfig) -> int:
    """Bytes per parameter element: bf16 under pure bf16, else fp32 (bf16-mixed keeps fp32 weights)."""
    return 2 if run.train.precision == "bf16-pure" else 4


def adamw_state(trainable: tuple[int, ...], size: int) -> tuple[dict[str, int], int]:
    """torch.optim.AdamW's state for these tensors: (elements per key, bytes). Moments in the parameters'
    dtype; `step` is a 1-element fp32 tensor per parameter."""
    n = sum(trainable)
    return {"exp_avg": n, "exp_avg_sq": n, "step": len(trainable)}, 2 * n * size + 4 * len(trainable)


def lowrank_factors(shapes: list[tuple[int, int]], rank: int) -> tuple[int, ...]:
    """numel of A (r x in) and B (out x r) for each (out, in) target, in that order."""
    return tuple(x for out, inn in shapes for x in (rank * inn, out * rank))


def factored_parameters(run: RunConfig, rank: int) -> tuple[dict[str, tuple[int, int]], tuple[int, ...]]:
    """(the targets {name: (out, in)}, numel of every trainable tensor) of a method that replaces each target
    Linear's weight by rank-`rank` factors A and B: the other parameters first, then A and B per target."""
    targets = target_matrices(run.model, run.method_cfg.targets, linear_only=True)
    trainable = (*model_parameters(run.model, exclude=tuple(targets)).values(),
                 *lowrank_factors(list(targets.values()), rank))
    return targets, trainable


def adamw_footprint(run: RunConfig, trainable: tuple[int, ...], **tensors: tuple[int, ...] | int) -> Footprint:
    """The footprint of `trainable` tensors all trained by one torch AdamW group, plus the method's other
    tensors (`frozen`, `buffers`, `buffer_bytes`)."""
    state, nbytes = adamw_state(trainable, param_bytes(run))
    return Footprint(trainable=trainable, state=(state,), state_bytes=nbytes, **tensors)
