"""Typed run configuration: dataclasses, validation, overrides, (de)serialisation and hashing.

A run is fully described by one `RunConfig`; the resolved config is saved as `config.json` in the run
directory, and everything downstream (resume, analysis, caches) reads it back with `from_dict` (through
runfolder/files.py, which supplies the method plugin: this module imports no other part of the package).
Unknown keys raise, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import LensError

PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")
PARALLEL_MODES = ("ddp", "fsdp")
DATA_MODES = ("pad", "packed")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
"""What distributed.py resolve_device understands."""
INT_LIMIT = 2**63
"""Every int field fits int64, the integer type torch and numpy hand these values to."""
MODEL_LIMITS = {"hidden_size": 2**16, "intermediate_size": 2**18, "num_layers": 2**10, "num_heads": 2**10,
                "vocab_size": 2**20, "max_seq_len": 2**24}
"""Upper bounds of the model's sizes, far past any real run (the largest published models have hidden 16 384,
intermediate 53 248, 126 layers, 128 heads, vocabularies of 262 144 and 10M-token contexts): a value beyond
one is a typo, refused before a tokenizer, an embedding or a layer table is built for it. Whether a config
within them fits the device is train/fits.py's check, also made before anything is allocated."""
TRAIN_SEED_LIMIT = 2**30
"""train.seed bound: the loop seeds each micro-batch with (seed * 1_000_003 + step) * 10_007 + index
(train/loop.py `_micro_seed`), and torch.manual_seed takes at most 2**64 - 1; 2**30 leaves room for
~10**14 steps."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise LensError(msg)


def _show(value: Any) -> str:
    """A value for a one-line message: huge ints shortened, everything else as repr, at most 60 chars."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**16:
        return f"{value:.3g}" if value.bit_length() < 1000 else f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def seed_field(default: int, limit: int = INT_LIMIT) -> Any:
    """A seed: non-negative (numpy's default_rng rejects negatives) and below `limit`; check_fields applies it."""
    return field(default=default, metadata={"seed_limit": limit})


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, section: str) -> None:
    """Every field of the config dataclass `obj` holds its annotated type: a bool is not an int, a float is
    not an int, ints fit int64, floats are finite. Runs first in every __post_init__, so a value from
    code, a JSON file or the command line is held to the same rules before the range checks."""
    hints = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        value, where, limit = getattr(obj, f.name), f"{section}.{f.name}", f.metadata.get("seed_limit")
        if limit and isinstance(value, int) and not isinstance(value, bool):  # before the generic int64 range
            _check(0 <= value < limit, f"{where} must be in [0, 2**{limit.bit_length() - 1}), got {_show(value)}")
        _check_type(value, hints[f.name], where)


def _check_type(value: Any, tp: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is not None:
            _check_type(value, next(a for a in args if a is not type(None)), where)
        return
    if origin in (tuple, list) or tp in (tuple, list):
        _check(isinstance(value, origin or tp), f"{where} expects a {(origin or tp).__name__}, got {_show(value)}")
        for v in value if args else ():
            _check_type(v, args[0], where)
        return
    if tp is bool:
        _check(isinstance(value, bool), f"{where} expects true or false, got {_show(value)}")
    elif tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where} expects int, got {_show(value)}")
        _check(-INT_LIMIT <= value < INT_LIMIT, f"{where} {_show(value)} is out of range (|value| < 2**63)")
    elif tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"{where} expects float, got {_show(value)}")
        _check(math.isfinite(value), f"{where} must be a finite number, got {_show(value)}")
    elif tp is str:
        _check(isinstance(value, str), f"{where} expects str, got {_show(value)}")


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
        check_fields(self, "model")
        for name, limit in MODEL_LIMITS.items():
            value = getattr(self, name)
            _check(0 < value <= limit, f"model.{name} must be in [1, {limit}] (no real model needs more), got "
                                       f"{_show(value)}")
        _check(self.hidden_size % self.num_heads == 0,
               f"model.hidden_size {self.hidden_size} is not divisible by model.num_heads {self.num_heads}")
        # RoPE rotates pairs of coordinates: an odd head dimension fails inside the first forward pass.
        _check((self.hidden_size // self.num_heads) % 2 == 0,
               f"model.hidden_size / model.num_heads = {self.hidden_size // self.num_heads} must be even (RoPE "
               f"rotates pairs); pick model.num_heads so the head dimension is even")
        _check(0 < self.rms_norm_eps < 1, f"model.rms_norm_eps must be in (0, 1), got {self.rms_norm_eps}")
        _check(0 < self.init_std <= 1, f"model.init_std must be in (0, 1], got {self.init_std}")


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
    shuffle_seed: int = seed_field(42)
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
        check_fields(self, "data")
        for name in ("source", "tokenizer", "text_field"):
            _check(bool(getattr(self, name).strip()), f"data.{name} must not be empty")
        _check(self.mode in DATA_MODES, f"data.mode {self.mode!r} is not one of {', '.join(DATA_MODES)}")
        _check(self.seq_len >= 8, f"data.seq_len must be at least 8, got {self.seq_len}")
        _check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.max_documents >= 0, f"data.max_documents must be >= 0 (0 = all documents), "
                                        f"got {self.max_documents}")
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
        check_fields(self, "optim")
        # AdamW moves every weight by about lr per step; the presets use 1e-3 to 1e-2 and N(0, 0.02^2) weights.
        _check(0 < self.lr <= 1, f"optim.lr must be in (0, 1], got {self.lr}")
        for name in ("beta1", "beta2"):
            _check(0 <= getattr(self, name) < 1, f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        _check(self.eps > 0, f"optim.eps must be positive, got {self.eps}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
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
    seed: int = seed_field(0, TRAIN_SEED_LIMIT)
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
    on_nonfinite: str = "stop"
    """A non-finite loss or gradient norm: 'stop' the run with one line (nothing is saved after the last good
    checkpoint), or 'skip' that update (the step counter and data order go on; 10 in a row still stop)."""
    parallel: str = "ddp"
    """Under torchrun: 'ddp' (every rank holds the whole model; the default up to 350m) or 'fsdp' (FSDP2:
    parameters, gradients and optimizer state sharded over the ranks; recommended at 1b). One process
    ignores it; checkpoints are the same either way, so a run may resume under the other or another world."""

    def __post_init__(self) -> None:
        check_fields(self, "train")
        _check(self.precision in PRECISIONS,
               f"train.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("steps", "total_batch_size", "micro_batch_size", "log_every"):
            _check(getattr(self, name) > 0, f"train.{name} must be positive, got {getattr(self, name)}")
        for name, zero in (("eval_every", "only at checkpoints"), ("eval_batch_size", "train.micro_batch_size"),
                           ("resume_every", "no rolling resume checkpoint")):
            _check(getattr(self, name) >= 0, f"train.{name} must be >= 0 (0 = {zero}), got {getattr(self, name)}")
        _check(self.checkpoints >= 1, f"train.checkpoints must be >= 1, got {self.checkpoints}")
        _check(bool(DEVICE_RE.fullmatch(self.device)),
               f"train.device {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        _check(self.total_batch_size % self.micro_batch_size == 0,
               f"train.total_batch_size {self.total_batch_size} is not divisible by "
               f"train.micro_batch_size {self.micro_batch_size}; pick a micro-batch that divides it")
        bad = set(self.sinks) - {"wandb", "tensorboard"}
        _check(not bad, f"unknown log sink(s) {sorted(bad)}; choose from wandb, tensorboard")
        _check(self.on_nonfinite in ("stop", "skip"),
               f"train.on_nonfinite {self.on_nonfinite!r} is not one of stop, skip")
        _check(self.parallel in PARALLEL_MODES,
               f"train.parallel {self.parallel!r} is not one of {', '.join(PARALLEL_MODES)}")


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
    def from_dict(cls, d: dict, method: MethodSpec) -> RunConfig:
        """From the JSON dict of `to_dict`; `method` is the plugin class of d["method"] (config is the
        lowest layer and knows no method: runfolder/files.run_config_from_dict looks it up)."""
        check_run_dict(d)
        _check(getattr(method, "name", d["method"]) == d["method"],
               f"config method {d['method']!r} was given the plugin of {getattr(method, 'name', '?')!r}")
        d = dict(d)
        notes = d.get("notes", [])
        cfg = cls(
            scale=d["scale"],
            method=d["method"],
            model=build_section(ModelConfig, d.get("model", {}), "model"),
            data=build_section(DataConfig, d.get("data", {}), "data"),
            optim=build_section(OptimConfig, d.get("optim", {}), "optim"),
            train=build_section(TrainConfig, d.get("train", {}), "train"),
            method_cfg=build_section(method.Config, d.get("method_cfg", {}), "method"),
            notes=list(notes),
        )
        # Checks that need several sections at once (a rank against the model's matrices, a restart cycle
        # against train.steps) belong to the method, which knows its own maths.
        method.check_config(cfg)
        return cfg

    def hash(self, exclude: tuple[str, ...] = ()) -> str:
        return config_hash(self.to_dict(), exclude)


SECTIONS = ("model", "data", "optim", "train", "method")


class MethodSpec(typing.Protocol):
    """What a run config needs of a method plugin (methods/base.py Method): its config class and the
    checks that need several sections at once."""

    Config: type

    @classmethod
    def check_config(cls, run: RunConfig) -> None: ...


def check_run_dict(d: Any) -> None:
    """The shape of a run config's JSON dict: an object of known sections, scale and method strings, notes
    a list of strings; one LensError otherwise."""
    _check(isinstance(d, dict), f"a run config is a JSON object of sections, got {_show(d)}")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(d) - known
    _check(not unknown, f"unknown config section(s) {sorted(unknown)}; valid: {sorted(known)}")
    for key in ("scale", "method"):
        _check(isinstance(d.get(key), str), f"a run config needs {key} as a string, got {_show(d.get(key))}")
    notes = d.get("notes", [])
    _check(isinstance(notes, list) and all(isinstance(n, str) for n in notes),
           f"config notes must be a list of strings, got {_show(notes)}")


def build_section(cls: type, values: dict, section: str) -> Any:
    """A config dataclass from a JSON dict, type-checked; unknown names are one clear error."""
    _check(isinstance(values, dict), f"config section {section} must be a table, got {_show(values)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    _check(not unknown, f"unknown {section} option(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    hints = _field_types(cls)
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON or command-line value to the annotated field type, refusing lossy conversions: a
    bool is not a number, 2.5 is not an int, and inf, nan or 1e400 are no number at all."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, args[0], where)
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        _check(isinstance(value, (list, tuple)), f"{where} expects a list, got {_show(value)}")
        args = typing.get_args(tp)
        inner = args[0] if args else (str if tp is tuple else Any)
        items = [v if inner is Any else _coerce(v, inner, where) for v in value]
        return tuple(items) if (origin or tp) is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise LensError(f"{where} expects true or false, got {_show(value)}")
    if tp in (int, float):
        return _number(value, tp, where)
    if tp is str:
        _check(isinstance(value, str), f"{where} expects str, got {_show(value)}")
    return value


def _number(value: Any, tp: type, where: str) -> int | float:
    """An int or float from a number or a string of one; an int field takes integral floats (1e4, 3.0)."""
    bad = f"{where} expects {tp.__name__}, got {_show(value)}"
    _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), bad)
    try:
        parsed = value
        if isinstance(value, str):
            parsed = int(value) if tp is int and value.strip().lstrip("+-").isdigit() else float(value)
        if tp is int and isinstance(parsed, int):
            return parsed  # exact, however large: the int64 range check names the field
        number = float(parsed)
    except (ValueError, OverflowError):
        raise LensError(bad) from None
    _check(math.isfinite(number), f"{where} must be a finite number, got {_show(value)}"
                                  f"{'' if str(number) in repr(value) else f' (= {number})'}")
    if tp is int:
        _check(number.is_integer(), f"{bad}; it must be a whole number")
        return int(number)
    return number


def apply_overrides(cfg: RunConfig, overrides: list[str], method: MethodSpec) -> RunConfig:
    """Apply `section.field=value` strings (e.g. `optim.lr=3e-3`, `method.rank=64`) and re-validate;
    `method` is the run's method plugin class."""
    d = cfg.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        _check(bool(sep) and bool(dot), f"override {item!r} is not of the form section.field=value "
                                        f"(sections: {', '.join(SECTIONS)})")
        _check(section in SECTIONS, f"unknown config section {section!r} in {item!r}; "
                                    f"valid: {', '.join(SECTIONS)}")
        d["method_cfg" if section == "method" else section][name] = value
    return RunConfig.from_dict(d, method)


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
