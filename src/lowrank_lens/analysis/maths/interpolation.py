"""1-D linear interpolation between two parameter sets and its barrier (docs/study.md §2, I1 and I2).

The curve L(alpha) = L((1 - alpha) theta_a + alpha theta_b) is the landscape engine run along the single
direction theta_b - theta_a from theta_a, so it shares the engine's batching and never mutates either
endpoint. (At alpha = 1 the point theta_a + (theta_b - theta_a) may differ from theta_b by one rounding
step per entry; the endpoint losses agree to fp tolerance.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import LensError
from .landscape import losses_along_directions
from .loss import Batch

BASELINES = ("midpoint", "linear")


def interpolation_curve(model: torch.nn.Module, params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor],
                        alphas: Sequence[float] | Tensor, batches: Iterable[Batch], *, method: str = "auto",
                        chunk_size: int | None = 4) -> Tensor:
    """L((1 - alpha) theta_a + alpha theta_b) for each alpha, fp64 [G] (docs/study.md I1/I2).

    Both dicts must name the same tensors with the same shapes (dense weights of one architecture; the
    study materialises ReLoRA/SLTrain before I2). The study's grid is linspace(0, 1, 21).
    """
    if set(params_a) != set(params_b):
        diff = sorted(set(params_a) ^ set(params_b))
        raise LensError(f"the two endpoints name different parameters, e.g. {diff[:5]}")
    direction = {}
    for n, a in params_a.items():
        if a.shape != params_b[n].shape:
            raise LensError(f"{n!r} has shape {tuple(a.shape)} at one endpoint, "
                            f"{tuple(params_b[n].shape)} at the other")
        direction[n] = params_b[n].detach() - a.detach()
    return losses_along_directions(model, params_a, [direction], alphas, batches,
                                   method=method, chunk_size=chunk_size)[0]


@dataclass
class Barrier:
    """Barrier of one interpolation curve. `relative` = barrier / ((L(0) + L(1)) / 2), as the study stores."""

    barrier: float
    relative: float
    argmax_alpha: float
    loss_a: float
    loss_b: float
    baseline: str


def interpolation_barrier(curve: Tensor, alphas: Sequence[float] | Tensor, baseline: str = "midpoint") -> Barrier:
    """Barrier of a curve over a grid that contains alpha = 0 and alpha = 1 and interior points.

    baseline 'midpoint' (the study's IMIB, docs/study.md I2):  max_{0<a<1} L(a) - (L(0) + L(1)) / 2.
    baseline 'linear'   (Frankle et al. 2020):            max_{0<a<1} L(a) - ((1 - a) L(0) + a L(1)).
    The max runs over interior grid points only, so a monotone curve can give a negative barrier (the
    number is reported as is, not clipped at 0). Grid points outside [0, 1] are ignored.
    """
    if baseline not in BASELINES:
        raise LensError(f"barrier baseline {baseline!r} is not one of {BASELINES}")
    a = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    L = curve.double().flatten()
    if L.numel() != a.numel():
        raise LensError(f"curve has {L.numel()} points, alphas {a.numel()}")
    ends = [(a == v).nonzero().flatten() for v in (0.0, 1.0)]
    if any(e.numel() == 0 for e in ends):
        raise LensError("the interpolation grid must contain alpha = 0 and alpha = 1 exactly")
    inner = (a > 0) & (a < 1)
    if not bool(inner.any()):
        raise LensError("the interpolation grid has no point strictly between 0 and 1")
    la, lb = float(L[ends[0][0]]), float(L[ends[1][0]])
    ref = torch.full_like(a, 0.5 * (la + lb)) if baseline == "midpoint" else (1 - a) * la + a * lb  # [G]
    excess = torch.where(inner, L - ref, torch.tensor(-torch.inf, dtype=torch.float64))
    j = int(excess.argmax())
    b = float(excess[j])
    return Barrier(b, b / (0.5 * (la + lb)), float(a[j]), la, lb, baseline)
