"""The reading seam: how a method's checkpoints are opened, beside the training seam (methods/base.py).

Readers of checkpoints (runfolder/loading.py, `lowrank-lens import`) never call the training hooks' siblings on
`Method`; they ask the method's reader, as torchtitan's state_dict_adapter.py sits beside its model.py:

    reader = method.reader                               # method.Reader(method)
    model  = reader.base_model(run_dir)                  # then method.prepare_model(model), seeded
    state  = reader.adapt_state(saved tensors)           # the saved names -> the model's
    reader.state_shapes(model)                           # the tensors a checkpoint stores: checked before loading
    reader.dense_module(model)                           # the model itself when it is its own dense view
    Reader.official_layout(folder, keys) / Reader.from_official(folder, state)   # `lowrank-lens import`

`CheckpointReader` fits every method trained here. A plugin whose checkpoints read otherwise (the official
scripts' layouts of ReLoRA, CoLA and SLTrain; the imported runs of `pretrained`) subclasses it in its own file
and names it as its `Reader`. The helpers below serve those official-layout readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import LensError
from ..model import build_model

if TYPE_CHECKING:
    from .base import Method


class CheckpointReader:
    """Reads checkpoints of a method trained here: the run's LLaMA, every tensor of its state dict, saved under
    the model's own names; no official layout."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.cfg = method.cfg
        self.run = method.run

    def base_model(self, run_dir: Path | None) -> nn.Module:
        """The model a checkpoint of this run is loaded into, before prepare_model: the LLaMA of the run's
        config, initialised from its seed (an imported run's plugin builds the architecture it saved)."""

        return build_model(self.run.model, seed=self.run.train.seed)

    def state_shapes(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """Name and shape of every tensor a checkpoint of this method stores for `model` (prepared)."""
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def adapt_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of a checkpoint file as the model names them (an imported run's renames)."""
        return state

    def dense_module(self, model: nn.Module) -> nn.Module | None:
        """A module that already is the dense view of `model`, or None: readers then build a plain LLaMA from
        dense_weights (runfolder/loading.py dense_model). Default: a method that keeps the plain architecture
        (prepare_model not overridden: full-rank and the optimizer-only methods) is its own dense view, so
        readers do not hold a second copy of the weights (4 GB in fp32 at 1b)."""
        return model if self.method.keeps_architecture else None

    @classmethod
    def official_layout(cls, folder: Path, keys: list[str]) -> bool:
        """Whether the checkpoint folder (its config.json, side files, tensor names `keys`) is the method's
        official scripts' layout (`lowrank-lens import`); no method's by default."""
        return False

    @classmethod
    def from_official(cls, folder: Path, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """(state in this plugin's names, method-config fields) of an official-layout checkpoint."""
        raise LensError("this method has no official checkpoint layout to import")

    @classmethod
    def reads_official_layout(cls) -> bool:
        """True for a reader that recognises an official layout (overrides official_layout)."""
        return cls.official_layout.__func__ is not CheckpointReader.official_layout.__func__


# ---- helpers of the official-layout readers ----------------------------------------------------------
def side_json(folder: Path, name: str) -> dict[str, Any]:
    """A JSON side file of a checkpoint folder (config.json, an official script's own), {} when absent."""
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
