"""Named presets as plain functions: a scale's model shape and training recipe, plus the method's defaults.

Reference scales (60m ... 1b) follow the shared "GaLore benchmark" recipe (methods.md §1): C4, t5-base,
sequence 256, batch 512 sequences, 10K/20K/60K/100K steps, 10% warmup, cosine to 10%, pure bf16, no
clipping, 10M validation tokens. CPU scales (`micro` for the demo, `nano` for tests) keep the shape of the
recipe on the offline embedded corpus. Per-method values live in each method's own `preset()`.
"""

from __future__ import annotations

import dataclasses

from .config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, apply_overrides
from .methods import get_method

# methods.md §1.1: hidden, intermediate, heads, layers (vocab 32000, RoPE over 1024 positions).
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


def preset_names() -> list[str]:
    return list(MODEL_SHAPES)


def scale_recipe(scale: str) -> RunConfig:
    """The full-rank recipe of a scale, before any method changes it."""
    if scale not in MODEL_SHAPES:
        from .errors import LensError

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
    """Resolve preset(scale) + method defaults for that scale + user overrides (`section.field=value`)."""
    cfg = scale_recipe(scale)
    method_cls = get_method(method)
    mp = method_cls.preset(scale, cfg.model.hidden_size)
    d = cfg.to_dict()
    d["method"] = method
    d["method_cfg"] = dict(mp.params)
    d["optim"].update(mp.optim)
    d["train"].update(mp.train)
    d["notes"] = list(mp.notes)
    cfg = RunConfig.from_dict(d)
    return apply_overrides(cfg, list(overrides)) if overrides else cfg
