"""The step loop of optimizers whose update is one parameter at a time (Flora's Adafactor, SPAM's AdamW), and
the closure call every optimizer's step() starts with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of torch's optional step closure, evaluated with gradients on (step() runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class ParamwiseOptimizer(torch.optim.Optimizer):
    """step() = `_step_param(p, group)` for every parameter with a (dense) gradient, group by group."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self._step_param(p, group)
        return loss

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError
