"""The training seam: the hooks the training loop calls, whose defaults are full-rank AdamW.

The training loop calls only these hooks and never names a method (docs/design.md, "Method plugin"):

    model = method.prepare_model(model)                 # module surgery, before DDP and dtype casts
    opt   = method.build_optimizer(model, cfg.optim)     # param groups; checked by check_param_groups
    lr    = base_lr * method.lr_multiplier(step)         # e.g. ReLoRA's jagged cosine
    extra = method.after_step(step, model, opt)          # e.g. ReLoRA merge + optimizer pruning
    units = method.fsdp_units(model)                     # the modules FSDP2 shards one by one

`step` is the number of updates completed: after_step(step=1) runs right after the first update. Analyses
read the trained parameterization through `dense_weights` (effective W per target layer, or None: CoLA) and
`factors`.

Readers of checkpoints use the method's reader instead (`Reader`, `method.reader`; methods/reading.py): the
model a checkpoint loads into, the tensors it stores and their names, and the official scripts' layouts. The
unlisted `pretrained` plugin (methods/pretrained.py) is the method of imported Hugging Face models.

Besides the hooks a plugin owns its configuration (`Config`, `preset`, `resolve`, `check_config`,
`unused_fields`), its description and colour, and its memory footprint (`footprint`), so a new method is one
file: nothing outside methods/ names a method. Its helpers live beside this module: shapes.py (the model's
matrices from the config, memory closed forms), ranks.py (methods with a rank), surgery.py (targets of a
built model, replacing them, optimizer groups) and schedule.py (the default lr schedule, stable seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..typed_fields import check_fields
from .reading import CheckpointReader
from .schedule import warmup_cosine
from .shapes import Footprint, adamw_footprint, model_parameters, target_matrices
from .surgery import target_modules

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
    Reader: ClassVar[type[CheckpointReader]] = CheckpointReader
    """How checkpoints of the method's runs are read (methods/reading.py); a plugin whose checkpoints read
    otherwise defines its subclass in its own file."""

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

    @property
    def reader(self) -> CheckpointReader:
        """The reader of this run's checkpoints: the plugin's `Reader` for this method."""
        return self.Reader(self)

    @property
    def keeps_architecture(self) -> bool:
        """Whether the plugin leaves the model's modules as they are (prepare_model not overridden: full-rank
        and the optimizer-only methods); its reader then uses the model as its own dense view."""
        return type(self).prepare_model is Method.prepare_model

    # ---- hooks ---------------------------------------------------------------------------------
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
        return adamw_footprint(run, tuple(model_parameters(run.model).values()))
