"""AuxAdamW: one torch optimizer that steps its `matrix` groups with an orthonormalising rule (Muon, Dion) and
every other group with torch.optim.AdamW, as the Muon and Dion recipes pair them (embeddings, LM head and norms
are trained by AdamW; docs/methods.md §19, §20).

The groups are plain dicts shared with an inner `torch.optim.AdamW` that owns the non-matrix groups, and the
two share one state dict, so there is a single optimizer for the loop: the schedule's `group["lr"]` reaches
both rules, `state_dict()` holds every group and every state in one torch format (tensors and python numbers
only), and `load_state_dict` re-links the inner optimizer to the loaded groups and state. Every group carries
every optimizer-wide setting (torch's defaults), each rule reads its own: AdamW lr, betas, eps and weight
decay; the matrix rule lr, weight decay and the subclass's keys.

Subclasses implement `_matrix_update(p, group, state, index)` for one matrix with a (dense) gradient; `index`
is the parameter's position over all groups, stable across a resume (Dion seeds its random draws with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .paramwise import closure_loss


class AuxAdamW(torch.optim.Optimizer):
    """Groups with `matrix: True` get the subclass's rule (2-D parameters only); the others torch AdamW."""

    def __init__(self, params: Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        groups = [dict(g, matrix=bool(g.get("matrix", False))) for g in params]
        for group in groups:
            group["params"] = list(group["params"])
            bad = [tuple(p.shape) for p in group["params"] if group["matrix"] and p.dim() != 2]
            if bad:
                raise ValueError(f"{type(self).__name__} matrix groups take 2-D parameters, got shapes {bad[:3]}")
        super().__init__(groups, defaults)
        aux = self._aux_groups()
        # The inner AdamW adds its own defaults (amsgrad, foreach, fused, ...) to the same group dicts.
        self._adamw = torch.optim.AdamW(aux, lr=defaults["lr"], betas=defaults["betas"], eps=defaults["eps"],
                                        weight_decay=defaults["weight_decay"]) if aux else None
        self._link()

    def _aux_groups(self) -> list[dict[str, Any]]:
        return [g for g in self.param_groups if not g["matrix"]]

    def _link(self) -> None:
        """The inner AdamW sees this optimizer's current group dicts and state (replaced by load_state_dict)."""
        if self._adamw is not None:
            self._adamw.param_groups = self._aux_groups()
            self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        self._link()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if group["matrix"] and p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    self._matrix_update(p, group, self.state[p], index)
                index += 1
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def _matrix_update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        raise NotImplementedError
