"""Typed run configuration: dataclasses, validation, overrides and (de)serialisation.

A run is fully described by one `RunConfig`; the resolved config is saved as `config.json` in the run
directory, and everything downstream (resume, analysis, caches) reads it back with `from_dict` (through
runfolder/files.py, which supplies the method plugin: this module imports only the field rules of
typed_fields.py and the hashes of hashing.py, no other part of the package).
Unknown keys raise, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from .hashing import config_hash
from .typed_fields import build_section, check, check_fields, seed_field, show

PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")
PARALLEL_MODES = ("ddp", "fsdp")
DATA_MODES = ("pad", "packed")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
"""What distributed.py resolve_device understands."""
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
            check(0 < value <= limit, f"model.{name} must be in [1, {limit}] (no real model needs more), got "
                                       f"{show(value)}")
        check(self.hidden_size % self.num_heads == 0,
               f"model.hidden_size {self.hidden_size} is not divisible by model.num_heads {self.num_heads}")
        # RoPE rotates pairs of coordinates: an odd head dimension fails inside the first forward pass.
        check((self.hidden_size // self.num_heads) % 2 == 0,
               f"model.hidden_size / model.num_heads = {self.hidden_size // self.num_heads} must be even (RoPE "
               f"rotates pairs); pick model.num_heads so the head dimension is even")
        check(0 < self.rms_norm_eps < 1, f"model.rms_norm_eps must be in (0, 1), got {self.rms_norm_eps}")
        check(0 < self.init_std <= 1, f"model.init_std must be in (0, 1], got {self.init_std}")


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
            check(bool(getattr(self, name).strip()), f"data.{name} must not be empty")
        check(self.mode in DATA_MODES, f"data.mode {self.mode!r} is not one of {', '.join(DATA_MODES)}")
        check(self.seq_len >= 8, f"data.seq_len must be at least 8, got {self.seq_len}")
        check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check(self.max_documents >= 0, f"data.max_documents must be >= 0 (0 = all documents), "
                                        f"got {self.max_documents}")
        check(self.val_tokens >= self.seq_len,
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
        check(0 < self.lr <= 1, f"optim.lr must be in (0, 1], got {self.lr}")
        for name in ("beta1", "beta2"):
            check(0 <= getattr(self, name) < 1, f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        check(self.eps > 0, f"optim.eps must be positive, got {self.eps}")
        check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}")


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
    lens: tuple[str, ...] = ()
    """Metrics computed on the live model while it trains (e.g. spectra,update_spectra), every lens_every steps
    from step 0, into <run>/lens.jsonl; the training is unchanged (the Python API's LensCallback)."""
    lens_every: int = 100
    """Steps between two lens observations."""
    on_nonfinite: str = "stop"
    """A non-finite loss or gradient norm: 'stop' the run with one line (nothing is saved after the last good
    checkpoint), or 'skip' that update (the step counter and data order go on; 10 in a row still stop)."""
    parallel: str = "ddp"
    """Under torchrun: 'ddp' (every rank holds the whole model; the default up to 350m) or 'fsdp' (FSDP2:
    parameters, gradients and optimizer state sharded over the ranks; recommended at 1b). One process
    ignores it; checkpoints are the same either way, so a run may resume under the other or another world."""

    def __post_init__(self) -> None:
        check_fields(self, "train")
        check(self.precision in PRECISIONS,
               f"train.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("steps", "total_batch_size", "micro_batch_size", "log_every", "lens_every"):
            check(getattr(self, name) > 0, f"train.{name} must be positive, got {getattr(self, name)}")
        for name, zero in (("eval_every", "only at checkpoints"), ("eval_batch_size", "train.micro_batch_size"),
                           ("resume_every", "no rolling resume checkpoint")):
            check(getattr(self, name) >= 0, f"train.{name} must be >= 0 (0 = {zero}), got {getattr(self, name)}")
        check(self.checkpoints >= 1, f"train.checkpoints must be >= 1, got {self.checkpoints}")
        check(bool(DEVICE_RE.fullmatch(self.device)),
               f"train.device {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        check(self.total_batch_size % self.micro_batch_size == 0,
               f"train.total_batch_size {self.total_batch_size} is not divisible by "
               f"train.micro_batch_size {self.micro_batch_size}; pick a micro-batch that divides it")
        bad = set(self.sinks) - {"wandb", "tensorboard"}
        check(not bad, f"unknown log sink(s) {sorted(bad)}; choose from wandb, tensorboard")
        check(self.on_nonfinite in ("stop", "skip"),
               f"train.on_nonfinite {self.on_nonfinite!r} is not one of stop, skip")
        check(self.parallel in PARALLEL_MODES,
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
        check(getattr(method, "name", d["method"]) == d["method"],
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
    check(isinstance(d, dict), f"a run config is a JSON object of sections, got {show(d)}")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(d) - known
    check(not unknown, f"unknown config section(s) {sorted(unknown)}; valid: {sorted(known)}")
    for key in ("scale", "method"):
        check(isinstance(d.get(key), str), f"a run config needs {key} as a string, got {show(d.get(key))}")
    notes = d.get("notes", [])
    check(isinstance(notes, list) and all(isinstance(n, str) for n in notes),
           f"config notes must be a list of strings, got {show(notes)}")


def apply_overrides(cfg: RunConfig, overrides: list[str], method: MethodSpec) -> RunConfig:
    """Apply `section.field=value` strings (e.g. `optim.lr=3e-3`, `method.rank=64`) and re-validate;
    `method` is the run's method plugin class."""
    d = cfg.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        check(bool(sep) and bool(dot), f"override {item!r} is not of the form section.field=value "
                                        f"(sections: {', '.join(SECTIONS)})")
        check(section in SECTIONS, f"unknown config section {section!r} in {item!r}; "
                                    f"valid: {', '.join(SECTIONS)}")
        d["method_cfg" if section == "method" else section][name] = value
    return RunConfig.from_dict(d, method)
