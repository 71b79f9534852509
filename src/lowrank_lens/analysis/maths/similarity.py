"""Activation similarity between a baseline X and a target Y, token by token (docs/study.md §2, A1-A4).

Rows are token vectors: hidden states [B, T, H] are read as [B*T, H] (tokens are the examples, as in
the study). Per layer:
  A1 mean_l2     = mean_i ||x_i - y_i||_2
  A2 relative_l2 = mean_l2 / mean_i ||x_i||_2
  A3 cosine      = mean_i cos(x_i, y_i)
  A4 cka         = ||C_yx||_F^2 / (||C_xx||_F ||C_yy||_F), C the column-centred cross-covariances
                   (linear CKA of Kornblith et al. 2019 in feature space: H x H, never N x N).
`SimilarityAccumulator` takes the rows batch by batch (fp64 sums of H x H moments), so activations of
many batches never need to be held at once. The study keeps padding positions on purpose (mask=None);
a boolean mask drops rows (e.g. padding) when wanted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...errors import LensError


def _rows(t: Tensor, mask: Tensor | None) -> Tensor:
    """[..., H] -> [N, H] fp64, keeping rows where mask (shaped like the leading dims) is True."""
    rows = t.detach().reshape(-1, t.shape[-1])
    if mask is not None:
        if mask.shape != t.shape[:-1]:
            raise LensError(f"mask shape {tuple(mask.shape)} does not match the leading dims {tuple(t.shape[:-1])}")
        rows = rows[mask.reshape(-1).to(device=rows.device, dtype=torch.bool)]
    return rows.double()


class SimilarityAccumulator:
    """Streaming A1-A4 for one layer. Call update() per batch, then result().

    CKA moments are accumulated about a shift c (the first batch's column means): the centred
    cross-covariance is unchanged by a shift, and subtracting c first keeps the raw fp64 sums small,
    avoiding the cancellation of sum(x x^T) - n mean mean^T when activations have a large mean.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sum_l2 = self.sum_norm_x = self.sum_norm_y = self.sum_cos = 0.0
        self.shift_x: Tensor | None = None
        self.shift_y: Tensor | None = None

    def update(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> None:
        """Add the rows of x and y ([..., H], same shape); mask [...] keeps rows where True."""
        if x.shape != y.shape:
            raise LensError(f"baseline and target activations differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        xr, yr = _rows(x, mask), _rows(y, mask)  # [N, H]
        if xr.shape[0] == 0:
            return
        self.sum_l2 += float((xr - yr).norm(dim=1).sum())
        self.sum_norm_x += float(xr.norm(dim=1).sum())
        self.sum_norm_y += float(yr.norm(dim=1).sum())
        self.sum_cos += float(torch.nn.functional.cosine_similarity(xr, yr, dim=1, eps=1e-8).sum())
        if self.shift_x is None:
            self.shift_x, self.shift_y = xr.mean(0), yr.mean(0)  # [H]
            H = xr.shape[1]
            z = xr.new_zeros
            self.sxx, self.syy, self.sxy = z(H, H), z(H, H), z(H, H)
            self.sx, self.sy = z(H), z(H)
        xs, ys = xr - self.shift_x, yr - self.shift_y
        self.sxx += xs.T @ xs
        self.syy += ys.T @ ys
        self.sxy += xs.T @ ys
        self.sx += xs.sum(0)
        self.sy += ys.sum(0)
        self.n += xr.shape[0]

    def cka(self) -> float:
        if self.n == 0:
            raise LensError("no rows were accumulated")
        n = self.n
        cxx = self.sxx - torch.outer(self.sx, self.sx) / n
        cyy = self.syy - torch.outer(self.sy, self.sy) / n
        cxy = self.sxy - torch.outer(self.sx, self.sy) / n
        return float(cxy.pow(2).sum() / (cxx.norm() * cyy.norm()))

    def result(self) -> dict[str, float]:
        """A1-A4 plus the mean norms of both sides and the number of rows."""
        if self.n == 0:
            raise LensError("no rows were accumulated")
        n = self.n
        return {"mean_l2": self.sum_l2 / n, "relative_l2": self.sum_l2 / self.sum_norm_x,
                "cosine": self.sum_cos / n, "cka": self.cka(),
                "baseline_norm": self.sum_norm_x / n, "target_norm": self.sum_norm_y / n, "n_tokens": float(n)}


def activation_similarity(x: Tensor, y: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """A1-A4 for one layer in one go (see SimilarityAccumulator)."""
    acc = SimilarityAccumulator()
    acc.update(x, y, mask)
    return acc.result()


def linear_cka(x: Tensor, y: Tensor, mask: Tensor | None = None) -> float:
    """Linear CKA of x [..., Hx] and y [..., Hy] (feature dims may differ), column-centred, fp64."""
    xr, yr = _rows(x, mask), _rows(y, mask)
    if xr.shape[0] != yr.shape[0]:
        raise LensError(f"x has {xr.shape[0]} rows, y {yr.shape[0]}")
    xr, yr = xr - xr.mean(0), yr - yr.mean(0)
    return float((yr.T @ xr).pow(2).sum() / ((xr.T @ xr).norm() * (yr.T @ yr).norm()))


class LayerwiseSimilarity:
    """One accumulator per layer, fed with tuples of hidden states (e.g. HF output_hidden_states)."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [SimilarityAccumulator() for _ in range(n_layers)]

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor], mask: Tensor | None = None) -> None:
        if not len(xs) == len(ys) == len(self.layers):
            raise LensError(f"expected {len(self.layers)} layers on both sides, got {len(xs)} and {len(ys)}")
        for acc, x, y in zip(self.layers, xs, ys, strict=True):
            acc.update(x, y, mask)

    def result(self) -> list[dict[str, float]]:
        return [acc.result() for acc in self.layers]
