"""Checkpoint layouts: dense Hugging Face weights ('hf'), or a method's official scripts' layout.

The official ReLoRA, CoLA and SLTrain scripts save their wrapped LLaMA with `save_pretrained` (folders
`model_<step>/`), with each method's own tensors per target linear. Which layout a folder has, and how its
tensors map onto the plugin's parameterization, is each plugin's knowledge (its reader's `official_layout` and
`from_official`, methods/reading.py): this module only reads the files and asks the plugins, so it names no
method. The converted runs then load into that plugin, and `dense_weights` and `factors` work as on native
runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..config import ModelConfig
from ..errors import LensError, first_line
from ..methods import get_method, method_names


def weight_keys(folder: Path) -> list[str]:
    """The tensor names of a model folder's weights, read from the headers / index only."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return sorted(json.loads((folder / index).read_text())["weight_map"])
    if (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return sorted(f.keys())  # noqa: SIM118
    return sorted(read_state(folder))


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with more than tensors, or a damaged file
        raise LensError(f"cannot read {path} as a state dict of tensors ({first_line(e)[:160]}); "
                        f"re-save the model with save_pretrained(safe_serialization=True)") from None


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder: model.safetensors, pytorch_model.bin, or either sharded with an index."""
    for index, loader in (("model.safetensors.index.json", lambda p: load_file(str(p))),
                          ("pytorch_model.bin.index.json", _load_bin)):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(loader(folder / shard))
            return state
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return _load_bin(folder / "pytorch_model.bin")
    raise LensError(f"{folder} has no model weights (model.safetensors or pytorch_model.bin)")


def official_layouts() -> list[str]:
    """The methods whose plugin reads an official checkpoint layout."""
    return [m for m in method_names() if get_method(m).Reader.reads_official_layout()]


def layouts() -> list[str]:
    return ["hf", *official_layouts()]


def detect_layout(folder: Path, keys: list[str]) -> str:
    """The official layout a plugin recognises in the folder, else 'hf' (dense weights)."""
    found = [m for m in official_layouts() if get_method(m).Reader.official_layout(folder, keys)]
    if len(found) > 1:
        raise LensError(f"{folder} looks like the official layout of {' and '.join(found)}; pass --layout")
    return found[0] if found else "hf"


def convert(layout: str, folder: Path, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """(state in the plugin's names, its method-config fields) of an official-layout checkpoint."""
    if layout not in official_layouts():
        raise LensError(f"unknown layout {layout!r}; choose from {', '.join(layouts())}")
    return get_method(layout).Reader.from_official(folder, state)


def llama_shape(hf: dict[str, Any], where: Path) -> ModelConfig:
    """The lowrank-lens LLaMA shape of an official script's config.json (they all train LLaMA)."""
    heads = int(hf.get("num_attention_heads", 0))
    if int(hf.get("num_key_value_heads") or heads) != heads or hf.get("tie_word_embeddings"):
        raise LensError(f"{where}/config.json has grouped KV heads or tied embeddings, which the factor layouts' "
                        f"plugins do not build; import it as --layout hf if its weights are dense")
    try:
        return ModelConfig(hidden_size=int(hf["hidden_size"]), intermediate_size=int(hf["intermediate_size"]),
                           num_layers=int(hf["num_hidden_layers"]), num_heads=heads, vocab_size=int(hf["vocab_size"]),
                           max_seq_len=int(hf.get("max_position_embeddings", 1024)),
                           rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
    except KeyError as e:
        raise LensError(f"{where}/config.json lacks {e}, which a LLaMA config has") from None
