"""Typed run configuration: dataclasses, validation, overrides, (de)serialisation and hashing.

A run is fully described by one `RunConfig`; the resolved config is saved as `config.json` in the run
directory, and everything downstream (resume, analysis, caches) reads it back with `from_dict`.
Unknown keys raise, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import LensError

PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")
DATA_MODES = ("pad", "packed")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise LensError(msg)


@dataclass
class ModelConfig:
    """Shape of the LLaMA decoder (transformers' LlamaForCausalLM)."""

    hidden_size: int = 512
    intermediate_size: int = 1376
    num_layers: int = 8
    num_heads: int = 8
    vocab_size: int = 32000
    max_seq_len: int = 1024
    """RoPE positions; the reference configs say 1024."""
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02
    """Every Linear and Embedding starts as N(0, init_std^2); norms start at 1."""

    def __post_init__(self) -> None:
        _check(self.hidden_size % self.num_heads == 0,
               f"model.hidden_size {self.hidden_size} is not divisible by model.num_heads {self.num_heads}")
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "vocab_size", "max_seq_len"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")


@dataclass
class DataConfig:
    """Where text comes from and how it becomes token rows."""

    source: str = "embedded"
    """'embedded' (Python's own documentation, offline), 'c4' (allenai/c4 en, streamed from the hub),
    or a path to a .txt/.jsonl/.json/.parquet file or a directory of them."""
    tokenizer: str = "bpe"
    """'bpe': train a byte-level BPE of model.vocab_size on the corpus (cached); else a HF name or path."""
    seq_len: int = 256
    mode: str = "pad"
    """'pad': one document per row, truncated/padded to seq_len, pad labels masked (the reference recipe);
    'packed': documents concatenated with EOS and cut into full rows."""
    text_field: str = "text"
    shuffle_seed: int = 42
    """Seed of the training-data order (the reference hard-codes 42)."""
    val_tokens: int = 10_000_000
    """Size of the fixed validation set in positions (rows x seq_len)."""
    val_fraction: float = 0.02
    """Local corpora: fraction of documents held out for validation (c4 uses its validation split)."""
    max_documents: int = 0
    """Use only the first N documents of a local corpus (0 = all); keeps tests and demos small."""
    streaming: bool = False
    """Stream rows instead of tokenizing the corpus once into a cache (always on for c4)."""
    cache_dir: str = ""
    """Where tokenizers and token rows are cached; default $LOWRANK_LENS_CACHE or ~/.cache/lowrank_lens."""

    def __post_init__(self) -> None:
        _check(self.mode in DATA_MODES, f"data.mode {self.mode!r} is not one of {', '.join(DATA_MODES)}")
        _check(self.seq_len >= 8, f"data.seq_len must be at least 8, got {self.seq_len}")
        _check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.val_tokens >= self.seq_len,
               f"data.val_tokens {self.val_tokens} is smaller than one row (data.seq_len {self.seq_len})")


@dataclass
class OptimConfig:
    """AdamW and the warmup + cosine schedule shared by every method (methods may add their own knobs)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 turns clipping off (the reference default)."""
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.1
    """The cosine decays from lr to lr * min_lr_ratio."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be positive, got {self.lr}")
        _check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, evaluation, logging and checkpoints."""

    steps: int = 10_000
    """Number of optimizer updates."""
    total_batch_size: int = 512
    """Sequences per update, summed over gradient accumulation and processes."""
    micro_batch_size: int = 128
    """Sequences per forward pass on one process."""
    precision: str = "bf16-pure"
    """'fp32', 'bf16-mixed' (autocast, fp32 master weights) or 'bf16-pure' (the reference: weights and
    optimizer moments in bf16)."""
    seed: int = 0
    """Model initialisation and method randomness (sparse supports, dropout)."""
    eval_every: int = 1000
    """Validate every N steps (and always at checkpoints); 0 = only at checkpoints."""
    eval_batch_size: int = 0
    """Sequences per validation batch; 0 = micro_batch_size. Also the batch of val_ppl_reference."""
    log_every: int = 10
    checkpoints: int = 10
    """Evenly spaced checkpoints after step 0; the last one is the final step. Step 0 is always saved."""
    resume_every: int = 0
    """Also keep a rolling resume checkpoint every N steps (0 = resume only from the checkpoints above)."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'."""
    init_from: str = ""
    """Warm start: load model weights from this checkpoint directory before the method wraps the model."""
    sinks: tuple[str, ...] = ()
    """Extra log sinks besides log.jsonl: 'wandb', 'tensorboard'."""

    def __post_init__(self) -> None:
        _check(self.precision in PRECISIONS,
               f"train.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("steps", "total_batch_size", "micro_batch_size", "log_every"):
            _check(getattr(self, name) > 0, f"train.{name} must be positive, got {getattr(self, name)}")
        _check(self.checkpoints >= 1, f"train.checkpoints must be >= 1, got {self.checkpoints}")
        _check(self.total_batch_size % self.micro_batch_size == 0,
               f"train.total_batch_size {self.total_batch_size} is not divisible by "
               f"train.micro_batch_size {self.micro_batch_size}; pick a micro-batch that divides it")
        bad = set(self.sinks) - {"wandb", "tensorboard"}
        _check(not bad, f"unknown log sink(s) {sorted(bad)}; choose from wandb, tensorboard")


@dataclass
class RunConfig:
    """Everything that defines a training run. `method_cfg` is the method's own config dataclass."""

    scale: str
    method: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method_cfg: Any = None
    notes: list[str] = field(default_factory=list)
    """Where this preset deviates from the official scripts, and other provenance remarks."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method_cfg"] = dataclasses.asdict(self.method_cfg) if self.method_cfg is not None else {}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        from .methods import get_method  # late import: methods import config

        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        _check(not unknown, f"unknown config section(s) {sorted(unknown)}; valid: {sorted(known)}")
        method_cls = get_method(d["method"])
        return cls(
            scale=d["scale"],
            method=d["method"],
            model=build_section(ModelConfig, d.get("model", {}), "model"),
            data=build_section(DataConfig, d.get("data", {}), "data"),
            optim=build_section(OptimConfig, d.get("optim", {}), "optim"),
            train=build_section(TrainConfig, d.get("train", {}), "train"),
            method_cfg=build_section(method_cls.Config, d.get("method_cfg", {}), "method"),
            notes=list(d.get("notes", [])),
        )

    def hash(self, exclude: tuple[str, ...] = ()) -> str:
        return config_hash(self.to_dict(), exclude)


SECTIONS = ("model", "data", "optim", "train", "method")


def build_section(cls: type, values: dict, section: str) -> Any:
    """A config dataclass from a JSON dict, type-checked; unknown names are one clear error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    _check(not unknown, f"unknown {section} option(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON or command-line value to the annotated field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, args[0], where)
    if origin is tuple or tp is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        args = typing.get_args(tp)
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, where) for v in value)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return list(value)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, str):
                return int(float(value)) if ("e" in value.lower() or "." in value) else int(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise LensError(f"{where} expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings (e.g. `optim.lr=3e-3`, `method.rank=64`) and re-validate."""
    d = cfg.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        _check(bool(sep) and bool(dot), f"override {item!r} is not of the form section.field=value "
                                        f"(sections: {', '.join(SECTIONS)})")
        _check(section in SECTIONS, f"unknown config section {section!r} in {item!r}; "
                                    f"valid: {', '.join(SECTIONS)}")
        d["method_cfg" if section == "method" else section][name] = value
    return RunConfig.from_dict(d)


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of dict order and of the process."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def config_hash(d: dict, exclude: tuple[str, ...] = ()) -> str:
    """Stable hash of a config dict; `exclude` holds dotted keys (e.g. 'train.device') to leave out."""
    d = json.loads(json.dumps(d, default=str))
    for key in exclude:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return stable_hash(d)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; used to list config differences."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
