"""The method of imported runs: a Hugging Face causal LM trained elsewhere, read as it was saved.

`lowrank-lens import` writes runs of this method for checkpoints whose weights are dense (any trainer's
`save_pretrained` folders, hub revisions, official scripts of optimizer-only methods such as GaLore): the
model is rebuilt from the HF config saved in the run (`hf_config/`), of any architecture the metrics know
(model/architectures.py: LLaMA/Mistral/Qwen2, GPT-NeoX/Pythia, GPT-2), and loaded from the checkpoint's
tensors with the names HF saved them under. Nothing trains it: it is registered unlisted, so training,
studies' method lists and `lowrank-lens list` never offer it. The run's label (the method it was trained
with, as the user names it) is in config.json's "imported" record, and is what tables and reports show.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..config import OptimConfig, RunConfig
from ..errors import LensError
from ..model.architectures import architecture, target_weights
from ..typed_fields import check_fields
from . import METHODS
from .base import Method
from .reading import CheckpointReader

HF_CONFIG_DIR = "hf_config"
"""Folder of the run holding the HF config.json (and tokenizer files) every checkpoint shares."""


@dataclass
class PretrainedConfig:
    model_type: str = "llama"
    """HF config.model_type of the imported model."""
    targets: tuple[str, ...] = ()
    """fnmatch patterns of the target matrices; empty = the architecture's (model/architectures.py)."""
    renames: tuple[str, ...] = ()
    """'saved=model' pairs: tensors the checkpoint files store under a name the model no longer uses (the
    import found them by content; e.g. GPT-NeoX's embed_out.weight, now lm_head.weight), so the files are
    linked as they are and renamed when read."""
    dropped: tuple[str, ...] = ()
    """Saved tensors the model does not have (buffers older transformers stored); ignored when read."""

    def __post_init__(self) -> None:
        check_fields(self, "method")
        architecture(self.model_type, self.targets)  # an unknown architecture without targets: one clear error


class PretrainedReader(CheckpointReader):
    """Reads an imported run: the architecture of its saved HF config, the tensors as HF saved them."""

    def base_model(self, run_dir: Path | None) -> nn.Module:
        """The architecture from the run's saved HF config, randomly initialised (the checkpoint's tensors
        replace every weight)."""

        if run_dir is None or not (Path(run_dir) / HF_CONFIG_DIR / "config.json").is_file():
            raise LensError(f"imported run {run_dir} has no {HF_CONFIG_DIR}/config.json; import it again "
                            f"(lowrank-lens import SOURCE --out RUN)")
        hf = AutoConfig.from_pretrained(str(Path(run_dir) / HF_CONFIG_DIR))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.run.train.seed)
            return AutoModelForCausalLM.from_config(hf, attn_implementation="eager")

    def state_shapes(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """The tensors an HF checkpoint holds: tied weights once (save_pretrained drops the tied copy, e.g.
        GPT-2's lm_head), persistent buffers only."""
        named = dict(model.named_parameters())  # remove_duplicate: a tied weight appears once
        persistent = {k for k in model.state_dict(keep_vars=True)}
        shapes = {k: tuple(p.shape) for k, p in named.items()}
        shapes.update({k: tuple(b.shape) for k, b in model.named_buffers() if k in persistent})
        return shapes

    def adapt_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The saved tensors under the model's names (`renames`), without the `dropped` ones."""
        rename = dict(pair.split("=", 1) for pair in self.cfg.renames)
        drop = set(self.cfg.dropped)
        return {rename.get(k, k): v for k, v in state.items() if k not in drop}

    def dense_module(self, model: nn.Module) -> nn.Module | None:
        """The model is already its own dense view (it is the architecture that was saved)."""
        return model


class Pretrained(Method):
    name = "pretrained"
    description = "a causal LM imported from elsewhere (lowrank-lens import), analysed as saved; never trained here"
    Config = PretrainedConfig
    Reader = PretrainedReader
    colour = "#7f7f7f"
    memory_formula = "imported: nothing is trained, so no optimizer state"

    @classmethod
    def check_config(cls, run: RunConfig) -> None:
        architecture(run.method_cfg.model_type, run.method_cfg.targets)

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        raise LensError("an imported run is analysed, not trained: lowrank-lens trains runs it made itself "
                        "(lowrank-lens train)")

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        return []

    def dense_weights(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Each target matrix as out x in (GPT-2's Conv1D transposed), keyed by module name."""
        return target_weights(model, architecture(self.cfg.model_type, self.cfg.targets))

    @classmethod
    def footprint(cls, run: RunConfig) -> Any:
        raise LensError("an imported run has no training memory footprint")


METHODS.register(Pretrained.name, listed=False)(Pretrained)
