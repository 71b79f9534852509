"""The method seam: five hooks whose defaults are full-rank AdamW.

The training loop calls only these hooks and never names a method (docs/design.md, "Method plugin"):

    model = method.prepare_model(model)                 # module surgery, before DDP and dtype casts
    opt   = method.build_optimizer(model, cfg.optim)     # param groups; checked by check_param_groups
    lr    = base_lr * method.lr_multiplier(step)         # e.g. ReLoRA's jagged cosine
    extra = method.after_step(step, model, opt)          # e.g. ReLoRA merge + optimizer pruning
    W     = method.dense_weights(model)                  # effective W per target layer, or None (CoLA)

`step` is the number of updates completed: after_step(step=1) runs right after the first update.

Readers of checkpoints (train/loading.py, `lowrank-lens import`) use five more, whose defaults fit every
method trained here: `base_model` (the module a checkpoint loads into: the run's LLaMA), `state_shapes`
(the tensors a checkpoint stores), `adapt_state` (saved names -> the model's), `dense_module` (a model that
is its own dense view), and `official_layout` / `from_official` (recognise and convert the method's official
scripts' checkpoints; ReLoRA, CoLA, SLTrain). The unlisted `pretrained` plugin (methods/pretrained.py) is
the method of imported Hugging Face models of any architecture.

Besides the hooks a plugin owns its configuration (`Config`, `preset`, `resolve`, `check_config`,
`unused_fields`), its description and colour, and its memory footprint (`footprint`), so a new method is one
file: nothing outside methods/ names a method.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import ModelConfig, OptimConfig, RunConfig, check_fields
from ..errors import LensError

# Attention q/k/v/o and MLP gate/up/down: the 7 matrices per block every reference method targets.
DEFAULT_TARGETS = ("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.o_proj",
                   "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj")


@dataclass
class MethodPreset:
    """A method's per-scale defaults: its own params plus changes to optim/train, with provenance notes."""

    params: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Provenance of the preset. The first note states its settings ("GaLore 60m: rank 128, lr 1e-2, ...");
    a value derived from the shape or the steps is stated as its rule ("rank = hidden/4"), never as a
    number, because `--set` may change the shape after the preset (tests/methods/test_preset_notes.py
    checks every note against the resolved config)."""


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


@dataclass
class BaseMethodConfig:
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """fnmatch patterns over module names selecting the target linears."""

    def __post_init__(self) -> None:
        check_fields(self, "method")
        if not self.targets or not all(t.strip() for t in self.targets):
            raise LensError(f"method.targets must be non-empty fnmatch patterns, got {self.targets}; the default "
                            f"is {','.join(DEFAULT_TARGETS)}")


class Method:
    """Full-rank AdamW. Subclasses override what their method changes and nothing else."""

    name: ClassVar[str] = "full-rank"
    description: ClassVar[str] = ""
    """Required: one line saying what the method trains and how (shown by `lowrank-lens list`)."""
    Config: ClassVar[type] = BaseMethodConfig
    has_dense_view: ClassVar[bool] = True
    """False when no dense W exists (CoLA: a SiLU sits between the factors)."""
    no_dense_reason: ClassVar[str] = ""
    is_baseline: ClassVar[bool] = False
    """True for the method other methods are compared with (activation similarity's default reference)."""
    linear_targets_only: ClassVar[bool] = False
    """True for methods that replace each target by a layer of their own (only a bias-free Linear can be)."""
    colour: ClassVar[str] = ""
    """Required: fixed plot colour "#rrggbb" of the method (the study's, docs/study.md §1.1), so figures agree
    across reports; distinct across methods (the contract test)."""
    unused_fields: ClassVar[dict[str, str]] = {}
    """Run-config fields the method does not read, each with the field that takes its role (GaLore:
    {"optim.eps": "method.eps"}); `--set` of one is an error instead of a silent no-op."""
    memory_formula: ClassVar[str] = ""
    """The footprint in words and symbols for docs/memory.md (h, i, L, V, E, P, r as defined there)."""

    def __init__(self, cfg: Any, run: RunConfig) -> None:
        self.cfg = cfg
        self.run = run

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        """Per-scale defaults (docs/study.md §1.4 for the study's scales). Values that follow the model's shape or
        the run's length are left automatic (0) here and filled in by `resolve` after the `--set` overrides."""
        return MethodPreset()

    @classmethod
    def resolve(cls, run: RunConfig) -> dict[str, Any]:
        """{method field: value} for every automatic (0) field, computed from the final config; build_config
        writes them into the config after the overrides, so the saved config.json records what trains."""
        return {}

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        """Config-time checks that need the whole run (the model's matrices, train.steps), called by
        RunConfig.from_dict so a bad value fails before any training; raise LensError. The base checks that
        every target pattern selects weight matrices (Linear only where `linear_targets_only`)."""
        target_matrices(run.model, run.method_cfg.targets, linear_only=cls.linear_targets_only)

    # ---- hooks ---------------------------------------------------------------------------------
    def base_model(self, run_dir: Path | None) -> nn.Module:
        """The model a checkpoint of this run is loaded into, before prepare_model: the LLaMA of the run's
        config, initialised from its seed (an imported run's plugin builds the architecture it saved)."""
        from ..model import build_model

        return build_model(self.run.model, seed=self.run.train.seed)

    def state_shapes(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """Name and shape of every tensor a checkpoint of this method stores for `model` (prepared)."""
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    @classmethod
    def official_layout(cls, folder: Path, keys: list[str]) -> bool:
        """Whether the checkpoint folder (its config.json, side files, tensor names `keys`) is the method's
        official scripts' layout (`lowrank-lens import`); no method's by default."""
        return False

    @classmethod
    def from_official(cls, folder: Path, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """(state in this plugin's names, method-config fields) of an official-layout checkpoint."""
        raise LensError(f"{cls.name} has no official checkpoint layout to import")

    def adapt_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of a checkpoint file as the model names them (an imported run's renames)."""
        return state

    def dense_module(self, model: nn.Module) -> nn.Module | None:
        """A module that already is the dense view of `model`, or None: readers then build a plain LLaMA from
        dense_weights (train/loading.py dense_model). Default: a method that keeps the plain architecture
        (prepare_model not overridden: full-rank and the optimizer-only methods) is its own dense view, so
        readers do not hold a second copy of the weights (4 GB in fp32 at 1b)."""
        return model if type(self).prepare_model is Method.prepare_model else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                                 weight_decay=optim.weight_decay)

    def lr_multiplier(self, step: int) -> float:
        """Multiplier of optim.lr for the update that takes the model from `step` to `step + 1`."""
        o, t = self.run.optim, self.run.train
        return warmup_cosine(step, t.steps, o.warmup_steps, o.min_lr_ratio)

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Runs after each update (step = updates done), on every rank. Returns extra scalars for the log.
        Under train.parallel=fsdp parameters and moments are shards (DTensors): code that needs a whole
        matrix reads it with sharding.full and writes with sharding.set_full_ / add_full_ (identities on
        plain tensors), so one body serves 1 process, DDP and FSDP2."""
        return {}

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        """The modules FSDP2 shards one by one (each all-gathered just for its forward/backward), before the
        root; by default the decoder blocks, so at most one block is ever whole on a rank."""
        layers = getattr(getattr(model, "model", None), "layers", None)
        return list(layers) if layers is not None else []

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Effective weight (out x in) of every target layer, keyed by module name; None if none exists."""
        return {name: mod.weight.detach() for name, mod in target_modules(model, self.cfg.targets)}

    def factors(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]] | None:
        """Trained factors per target layer (e.g. {'A': r x in, 'B': out x r}) for methods without a dense
        view; None when the dense view is the natural object."""
        return None

    # ---- memory ----------------------------------------------------------------------------------
    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """Every parameter trainable, one torch AdamW group: two moments per parameter and a 1-element fp32
        `step` per tensor."""
        trainable = tuple(model_parameters(run.model).values())
        state, nbytes = adamw_state(trainable, param_bytes(run))
        return Footprint(trainable=trainable, state=(state,), state_bytes=nbytes)


# ---- helpers shared by methods -----------------------------------------------------------------
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


class RankedMethod(Method):
    """A method with a `rank` option that factorises or projects the targets: method.rank 0 resolves to
    auto_rank, and the rank is checked against the smallest target (check_rank)."""

    scaled_by_alpha: ClassVar[bool] = False
    """True for the LoRA-style methods: their method.alpha 0 resolves to auto_alpha (alpha / r = 0.25)."""

    @classmethod
    def resolve(cls, run: RunConfig) -> dict[str, Any]:
        cfg = run.method_cfg
        rank = auto_rank(cfg.rank, run.model)
        values = {"rank": rank, **({"alpha": auto_alpha(cfg.alpha, rank)} if cls.scaled_by_alpha else {})}
        return {k: v for k, v in values.items() if not getattr(cfg, k)}

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        super().check_config(run)
        check_rank(run)


def lowrank_factors(shapes: list[tuple[int, int]], rank: int) -> tuple[int, ...]:
    """numel of A (r x in) and B (out x r) for each (out, in) target, in that order."""
    return tuple(x for out, inn in shapes for x in (rank * inn, out * rank))


def check_rank(run: RunConfig) -> None:
    """method.rank (0: automatic, see auto_rank) factorising or projecting an out x in matrix is meaningful
    only up to min(out, in); above it the factors hold more parameters than the matrix (CoLA at r = 8 x
    hidden has 15x the weights). The bound is that of the smallest selected matrix."""
    auto = not run.method_cfg.rank
    rank = auto_rank(run.method_cfg.rank, run.model)
    matrices = target_matrices(run.model, run.method_cfg.targets, linear_only=False)
    name, (out, inn) = min(matrices.items(), key=lambda kv: min(kv[1]))
    bound = min(out, inn)
    if rank > bound:
        what = f"method.rank (automatic: hidden_size // 4 = {rank})" if auto else f"method.rank {rank}"
        raise LensError(f"{what} exceeds {bound} = min(out, in) of the smallest target matrix {name} "
                        f"({out} x {inn}); use method.rank <= {bound}")


def auto_rank(rank: int, model: ModelConfig) -> int:
    """method.rank, where 0 means hidden_size // 4 (the 60m ratio 128 / 512), from the final shape."""
    return rank or max(1, model.hidden_size // 4)


def auto_alpha(alpha: float, rank: int) -> float:
    """method.alpha, where 0 means rank / 4: the scale alpha / r = 0.25 of the 60m recipes (32 / 128)."""
    return alpha or rank / 4


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. (seed, step, layer name)), not on process or RNG
    state, so every DDP rank and every resumed run draws the same numbers."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup from 0, then cosine from 1 to min_ratio (the reference `get_scheculer` cosine).

    As in the reference LambdaLR, the first update (step 0) has multiplier 0 when warmup > 0.
    """
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def target_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """Modules whose names match any pattern, in model order. A pattern matching nothing is an error."""
    names = [n for n, _ in model.named_modules()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise LensError(f"target pattern {pat!r} matches no module; module names look like "
                            f"{names[min(5, len(names) - 1)]!r}")
    return [(n, m) for n, m in model.named_modules() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_param_groups(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every trainable parameter sits in exactly one optimizer group, and nothing else does."""
    seen: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters()}
    twice = [names.get(i, "?") for i, c in seen.items() if c > 1]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    frozen = [names[i] for i in seen if i in names and not dict(model.named_parameters())[names[i]].requires_grad]
    if twice or missing or frozen:
        raise RuntimeError(f"optimizer groups are wrong: in several groups {twice[:3]}, missing {missing[:3]}, "
                           f"frozen but optimized {frozen[:3]}")


def side_json(folder: Path, name: str) -> dict[str, Any]:
    """A JSON side file of a checkpoint folder (config.json, an official script's own), {} when absent."""
    import json

    f = Path(folder) / name
    return json.loads(f.read_text()) if f.is_file() else {}


def drop_rope_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without the `rotary_emb.inv_freq` buffers older transformers saved (derived from the config today)."""
    return {k: v for k, v in state.items() if not k.endswith(".rotary_emb.inv_freq")}


def refuse_keys(state: dict[str, torch.Tensor], suffix: str, method: str, what: str) -> None:
    """One LensError when an official checkpoint holds a tensor the plugin cannot represent."""
    hits = [k for k in state if k.endswith(suffix)]
    if hits:
        raise LensError(f"the official {method} checkpoint has {hits[0]} ({what}), which the {method} plugin "
                        f"does not represent; it cannot be imported")


def tensor_stems(state: dict[str, torch.Tensor], suffix: str) -> list[str]:
    """Module names of the tensors ending in `suffix` (the targets of an official layout)."""
    return sorted({k[: -len(suffix)] for k in state if k.endswith(suffix)})
