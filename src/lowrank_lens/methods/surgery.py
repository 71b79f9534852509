"""Working on a built model: the target modules a method's patterns select, the layers it puts in their place,
the weights its optimizer treats apart, and the check that its optimizer groups cover the model."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch
from torch import nn

from ..errors import LensError


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


def replace_linears(model: nn.Module, patterns: tuple[str, ...], method: str,
                    make: Callable[[str, nn.Linear], nn.Module]) -> list[str]:
    """Put `make(name, linear)` in place of every target, in model order, and return the targets' names. A
    target that is not a bias-free nn.Linear is a LensError naming `method` (only such a layer can be
    replaced by a method's own)."""
    targets = target_modules(model, patterns)
    for name, mod in targets:
        if not isinstance(mod, nn.Linear) or mod.bias is not None:
            raise LensError(f"{method} wraps bias-free nn.Linear layers; {name} is {type(mod).__name__}"
                            f"{' with a bias' if isinstance(mod, nn.Linear) else ''}")
        replace_module(model, name, make(name, mod))
    return [name for name, _ in targets]


def split_target_weights(model: nn.Module, patterns: tuple[str, ...]) -> tuple[dict[str, nn.Parameter],
                                                                              list[nn.Parameter]]:
    """({module name: weight} of the trainable target weights, in model order; every other trainable
    parameter): the two groups of the optimizers that treat the target matrices apart (GaLore's projected
    group, Flora's compressed momentum, SPAM's target group)."""
    targets = {name: mod.weight for name, mod in target_modules(model, patterns)
               if getattr(mod, "weight", None) is not None and mod.weight.requires_grad}
    ids = {id(p) for p in targets.values()}
    return targets, [p for p in model.parameters() if p.requires_grad and id(p) not in ids]


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
