"""Named presets as plain functions: a scale's model shape and training recipe, plus the method's defaults.

Reference scales (60m ... 1b) follow the shared "GaLore benchmark" recipe (docs/methods.md §1): C4, t5-base,
sequence 256, batch 512 sequences, 10K/20K/60K/100K steps, 10% warmup, cosine to 10%, pure bf16, no
clipping, 10M validation tokens. CPU scales (`micro` for the demo, `nano` for tests) keep the shape of the
recipe on the offline embedded corpus. Per-method values live in each method's own `preset()`.

Values derived from the model's shape or the run's length (a CPU preset's rank = hidden/4, ReLoRA's reset
interval = steps / 4, the reference recipe's 10% warmup) are computed after the `--set` overrides, from the
final config, and written into it, so `config.json` records what trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, apply_overrides
from .errors import LensError
from .methods import get_method

# docs/methods.md §1.1: hidden, intermediate, heads, layers (vocab 32000, RoPE over 1024 positions).
MODEL_SHAPES: dict[str, ModelConfig] = {
    "nano": ModelConfig(hidden_size=64, intermediate_size=176, num_layers=2, num_heads=2, vocab_size=512,
                        max_seq_len=64),
    "micro": ModelConfig(hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4, vocab_size=4096,
                         max_seq_len=128),
    "60m": ModelConfig(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8),
    "130m": ModelConfig(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12),
    "350m": ModelConfig(hidden_size=1024, intermediate_size=2736, num_layers=24, num_heads=16),
    "1b": ModelConfig(hidden_size=2048, intermediate_size=5461, num_layers=24, num_heads=32),
}

# steps, per-device micro-batch (the study's single-GPU values; 1b from GaLore's 8-GPU script).
_REFERENCE_RECIPE = {"60m": (10_000, 128), "130m": (20_000, 128), "350m": (60_000, 64), "1b": (100_000, 16)}

REFERENCE_SCALES = tuple(_REFERENCE_RECIPE)

# The reference recipe's values that follow train.steps (10% warmup, 10 validations); recomputed from the
# final steps unless the method's preset or a --set override names them.
_REFERENCE_DERIVED: dict[str, Callable[[RunConfig], Any]] = {
    "optim.warmup_steps": lambda c: c.train.steps // 10,
    "train.eval_every": lambda c: c.train.steps // 10,
}


def preset_names() -> list[str]:
    return list(MODEL_SHAPES)


def scale_recipe(scale: str) -> RunConfig:
    """The full-rank recipe of a scale, before any method changes it."""
    if scale not in MODEL_SHAPES:
        raise LensError(f"unknown preset {scale!r}; choose one of: {', '.join(MODEL_SHAPES)}")
    model = dataclasses.replace(MODEL_SHAPES[scale])
    if scale in _REFERENCE_RECIPE:
        steps, micro = _REFERENCE_RECIPE[scale]
        data = DataConfig(source="c4", tokenizer="t5-base", seq_len=256, mode="pad")
        optim = OptimConfig(lr=1e-3, warmup_steps=steps // 10)
        train = TrainConfig(steps=steps, total_batch_size=512, micro_batch_size=micro, precision="bf16-pure",
                            eval_every=steps // 10, checkpoints=10, log_every=10)
        return RunConfig(scale=scale, method="full-rank", model=model, data=data, optim=optim, train=train)
    if scale == "micro":
        # About a minute on a 2-core laptop CPU: 150 updates of 32 x 128 tokens of Python documentation.
        data = DataConfig(source="embedded", tokenizer="bpe", seq_len=128, mode="packed", val_tokens=128 * 128,
                          val_fraction=0.05)
        optim = OptimConfig(lr=2e-3, warmup_steps=15)
        train = TrainConfig(steps=150, total_batch_size=32, micro_batch_size=32, precision="fp32",
                            eval_every=50, checkpoints=10, log_every=10)
        return RunConfig(scale=scale, method="full-rank", model=model, data=data, optim=optim, train=train)
    # nano: seconds, for tests; micro-batch 4 of 8 exercises gradient accumulation.
    data = DataConfig(source="embedded", tokenizer="bpe", seq_len=32, mode="packed", val_tokens=32 * 16,
                      max_documents=3000)
    optim = OptimConfig(lr=3e-3, warmup_steps=2)
    train = TrainConfig(steps=20, total_batch_size=8, micro_batch_size=4, precision="fp32", eval_every=10,
                        checkpoints=4, log_every=1)
    return RunConfig(scale=scale, method="full-rank", model=model, data=data, optim=optim, train=train)


def build_config(scale: str, method: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve preset(scale) + method defaults for that scale + user overrides (`section.field=value`), then
    the values derived from the final config (module docstring), recorded in the notes."""
    overrides = list(overrides)
    recipe = scale_recipe(scale)
    method_cls = get_method(method)
    mp = method_cls.preset(scale)
    d = recipe.to_dict()
    d["method"] = method
    d["method_cfg"] = dict(mp.params)
    d["optim"].update(mp.optim)
    d["train"].update(mp.train)
    d["notes"] = list(mp.notes)
    cfg = RunConfig.from_dict(d, method_cls)
    preset_fixed = {f"optim.{k}" for k in mp.optim} | {f"train.{k}" for k in mp.train}
    if not overrides:  # a method preset's own optim/train values win over the recipe's derived ones
        return _resolve_derived(cfg, scale, method_cls, fixed=preset_fixed)
    named = {item.partition("=")[0].strip() for item in overrides}
    for key in sorted(named & set(method_cls.unused_fields)):  # a silent no-op otherwise
        other = method_cls.unused_fields[key]
        raise LensError(f"--set {key}: {method} does not read {key}, it uses {other}; set that instead")
    cfg = apply_overrides(cfg, overrides, method_cls)
    cfg.notes.append(f"--set after the preset (the notes above describe the preset): {', '.join(overrides)}")
    return _resolve_derived(cfg, scale, method_cls, named | preset_fixed)


def _resolve_derived(cfg: RunConfig, scale: str, method_cls: type, fixed: set[str]) -> RunConfig:
    """Recompute the recipe's step-derived values (unless `fixed`) and fill the method's automatic fields."""
    d = cfg.to_dict()
    derived = {k: f(cfg) for k, f in (_REFERENCE_DERIVED if scale in REFERENCE_SCALES else {}).items()
               if k not in fixed}
    changed = {}
    for key, value in derived.items():
        section, name = key.split(".")
        if d[section][name] != value:
            d[section][name] = changed[key] = value
    if changed:
        d["notes"].append("10% of train.steps: " + ", ".join(f"{k} {v}" for k, v in changed.items()))
        cfg = RunConfig.from_dict(d, method_cls)
    auto = method_cls.resolve(cfg)
    if not auto:
        return cfg
    d["method_cfg"].update(auto)
    d["notes"].append("automatic values from the final config: " + ", ".join(f"method.{k} {v:g}"
                                                                             for k, v in auto.items()))
    return RunConfig.from_dict(d, method_cls)
