"""Where the target matrices of a Hugging Face causal LM are, per architecture.

The metrics read "the target matrices" (attention and MLP projections): for LLaMA-family models these are
the seven linears every low-rank method replaces; for other architectures the same roles under other names.
An architecture is found from the HF config's `model_type`; `targets` overrides the patterns for a model
this table does not know (fnmatch patterns over module names, like `method.targets`).

Everything the code knows about an architecture is its entry here (targets, the decoder-block list, the
submodules whose matrices a "stored" spectrum reads): adding a readable architecture is one `Architecture`
entry (`register` adds one at run time, e.g. from a test) and nothing else.

GPT-2's attention and MLP are `Conv1D` modules that store W as in x out (y = x W + b); the dense view of a
target is always out x in (y = W x + b), so those are transposed (`transposed` below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LensError


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    """HF `config.model_type` values of this layout."""
    targets: tuple[str, ...]
    """fnmatch patterns of the target modules (attention and MLP projections)."""
    blocks: str
    """Dotted path of the decoder-block list, e.g. 'model.layers' ('' = unknown: any '<name>.<digits>.')."""
    stored: tuple[str, ...] = ()
    """Submodules of a block whose 2-D parameters are the block's stored matrices (attention and MLP
    containers, or the MLP's linears where a block holds them directly); spectra's view=stored reads them."""
    transposed: bool = False
    """The targets store W as in x out (GPT-2's Conv1D)."""

    def block_index(self, name: str) -> int:
        """Decoder-block index in a parameter or module name ('model.layers.3.mlp' -> 3); -1 outside the
        blocks."""
        if self.blocks:
            head, dot, rest = name.partition(self.blocks + ".")
            number = rest.split(".", 1)[0]
            return int(number) if not head and dot and number.isdigit() else -1
        parts = name.split(".")
        return next((int(b) for b in parts[1:] if b.isdigit()), -1)

    def is_stored(self, name: str) -> bool:
        """A parameter of one of the blocks' stored submodules."""
        return self.block_index(name) >= 0 and any(f".{m}." in name for m in self.stored)


LLAMA_TARGETS = ("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj", "*.self_attn.o_proj",
                 "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj")
ARCHITECTURES: list[Architecture] = [
    Architecture("llama", ("llama", "mistral", "qwen2"), LLAMA_TARGETS, "model.layers", ("self_attn", "mlp")),
    Architecture("gpt_neox", ("gpt_neox",), ("*.attention.query_key_value", "*.attention.dense",
                                             "*.mlp.dense_h_to_4h", "*.mlp.dense_4h_to_h"), "gpt_neox.layers",
                 ("attention", "mlp")),
    Architecture("gpt2", ("gpt2",), ("*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj"), "transformer.h",
                 ("attn", "mlp"), transposed=True),
]


@contextlib.contextmanager
def register(arch: Architecture) -> Iterator[Architecture]:
    """Make `arch` known while the block runs (a test, or a script reading a new architecture)."""
    clash = set(arch.model_types) & set(known_model_types())
    if clash:
        raise LensError(f"architecture {arch.name!r}: model types {sorted(clash)} are already known")
    ARCHITECTURES.append(arch)
    try:
        yield arch
    finally:
        ARCHITECTURES.remove(arch)


def known_model_types() -> list[str]:
    return sorted(t for a in ARCHITECTURES for t in a.model_types)


def architecture(model_type: str, targets: tuple[str, ...] = ()) -> Architecture:
    """The layout of `model_type`; with `targets`, those patterns instead of the table's (which lets an
    unknown architecture through: its blocks are then found by their position in module names)."""
    for a in ARCHITECTURES:
        if model_type in a.model_types:
            return dataclasses.replace(a, targets=tuple(targets) or a.targets)
    if targets:
        return Architecture(model_type, (model_type,), tuple(targets), "")
    raise LensError(f"architecture {model_type!r} is not one lowrank-lens knows ({', '.join(known_model_types())}); "
                    f"name its attention and MLP projections with --targets 'PATTERN,...' (fnmatch over module "
                    f"names, e.g. '*.attn.q,*.mlp.fc1')")


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def target_weights(model: nn.Module, arch: Architecture) -> dict[str, torch.Tensor]:
    """{module name: W (out x in), detached} of every target module, in model order; a pattern that
    matches no module is an error (a wrong --targets, or another variant of the architecture)."""
    found: dict[str, torch.Tensor] = {}
    for pat in arch.targets:
        hits = [(n, m) for n, m in model.named_modules() if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise LensError(f"target pattern {pat!r} matches no module of this {arch.name} model; module names "
                            f"look like {_example_names(model)}; pass --targets")
        for n, m in hits:
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.ndim != 2:
                raise LensError(f"target pattern {pat!r} selects {n} ({type(m).__name__}), which has no 2-D weight")
            found[n] = w.detach().T if (arch.transposed or _is_conv1d(m)) else w.detach()
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _example_names(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    return ", ".join(names[1:4]) + (", ..." if len(names) > 4 else "")


def block_index(name: str) -> int:
    """Decoder-block index in a parameter or module name under any known architecture's block list
    ('model.layers.3.mlp', 'transformer.h.3.attn' -> 3), else the first number in the name (an architecture
    read with --targets); -1 when there is none."""
    known = next((i for a in ARCHITECTURES if (i := a.block_index(name)) >= 0), -1)
    return known if known >= 0 else UNKNOWN.block_index(name)


UNKNOWN = Architecture("unknown", (), (), "")
"""An architecture no entry describes: blocks by the first number in a name, nothing stored."""


def of_model(model: nn.Module) -> Architecture:
    """The architecture of a loaded model, from its HF config's model_type (an unknown one: blocks found by
    the first number in a name, nothing stored)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    known = next((a for a in ARCHITECTURES if model_type in a.model_types), None)
    return known or UNKNOWN
