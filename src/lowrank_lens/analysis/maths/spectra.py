"""Spectral structure of weights W and of learned updates dW (docs/study.md §2, dimension 3: S1-S6).

`singular_values` batches same-shaped matrices into one svdvals call and turns wide matrices tall first
(docs/ecosystem.md §3.2: LAPACK is ~3.6x faster on the tall orientation; the singular values are the same).
`spectral_metrics` turns one spectrum into the study's per-matrix scalars; `mean_metrics` is the
unweighted mean across matrices the study reports per checkpoint. `update_norms` gives the update
magnitudes of S4 for dW = W_after - W_before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import LensError

STUDY_RANK_TOL = 1e-12  # the study keeps s_i > 1e-12: below fp32 rounding, so every fp32 matrix is "full rank"
FP32_EPS = float(torch.finfo(torch.float32).eps)
ZERO_RULES = ("skip", "zero")
SV_THRESHOLD = 0.1  # the study's "#SV > 0.1"


def _as_matrix(w: Tensor) -> Tensor:
    if w.ndim < 2:
        raise LensError(f"singular values need a matrix, got a tensor of shape {tuple(w.shape)}")
    m = w.detach().reshape(w.shape[0], -1)
    return m.T if m.shape[0] < m.shape[1] else m  # tall: rows >= cols


def singular_values(mats: Mapping[str, Tensor] | Sequence[Tensor], *, dtype: torch.dtype | None = None,
                    max_batch: int = 16) -> dict[str, Tensor] | list[Tensor]:
    """Singular values (descending, min(m, n) of them) of each matrix, in the container type given.

    Matrices of one (tall-oriented) shape are stacked, at most `max_batch` at a time, into a single
    batched svdvals. dtype: default fp64 on CPU (cheap there, and exact enough for tiny s_i), fp32
    elsewhere. Tensors with ndim > 2 are read as [shape[0], -1]. Results stay on the input's device.
    """
    items = list(mats.items()) if isinstance(mats, Mapping) else list(enumerate(mats))
    groups: dict[tuple, list[int]] = {}
    tall = [_as_matrix(w) for _, w in items]
    for i, m in enumerate(tall):
        groups.setdefault((tuple(m.shape), m.device, m.dtype), []).append(i)
    out: list[Tensor | None] = [None] * len(items)
    for (_, device, _), idx in groups.items():
        dt = dtype or (torch.float64 if device.type == "cpu" else torch.float32)
        for start in range(0, len(idx), max_batch):
            chunk = idx[start:start + max_batch]
            s = torch.linalg.svdvals(torch.stack([tall[i] for i in chunk]).to(dt))  # [b, min(m, n)]
            for i, row in zip(chunk, s, strict=True):
                out[i] = row
    if isinstance(mats, Mapping):
        return {k: s for (k, _), s in zip(items, out, strict=True)}
    return out  # type: ignore[return-value]


def rank_tolerance(s1: float, max_dim: int, eps: float = FP32_EPS) -> float:
    """numpy's matrix_rank rule: max(m, n) * eps * s_1, with eps of the precision the matrix was computed
    in (fp32: the analysed matrices are fp32 tensors, so their rounding noise is at that level)."""
    return max_dim * eps * s1


def spectral_metrics(s: Tensor, n: int | None = None, *, tol: float | None = None, max_dim: int | None = None,
                     threshold: float = SV_THRESHOLD, zero_matrix: str = "skip") -> dict[str, float]:
    """The study's per-matrix scalars from singular values s (any order); n = min(rows, cols) = len(s).

    Only s_i > tol enter. tol None (default): relative, `rank_tolerance(s_1, max_dim)` with max_dim =
    max(rows, cols) (default n); a number: absolute (the study: 1e-12, which no fp32 rounding noise is
    below). With p_i = s_i / sum_j s_j:
      rank = #{s_i > tol}                       rank_ratio = rank / n
      effective_rank = exp(-sum p_i log p_i)    effective_rank_score = effective_rank / n  (Roy & Vetterli)
      stable_rank = sum s_i^2 / s_1^2           stable_rank_ratio = stable_rank / n
      spectral_gap = (s_1 - s_2) / s_1          singular_value_ratio = s_2 / s_1  (s_2 = 0 if rank < 2)
      n_sv_above = #{s_i > threshold}           n_sv_above_ratio = n_sv_above / n
    A zero matrix (rank 0) has no p_i and no s_1: zero_matrix="skip" (default) gives NaN for those ratios
    and `mean_metrics` leaves the matrix out of their mean; "zero" is the study's rule, 0 for each (which
    pulls the mean of e.g. the effective rank towards 0 for a matrix that has no spectrum at all).
    """
    if zero_matrix not in ZERO_RULES:
        raise LensError(f"zero_matrix {zero_matrix!r} is not one of {', '.join(ZERO_RULES)}")
    s = s.detach().double().flatten().sort(descending=True).values.cpu()
    n = s.numel() if n is None else n
    s1 = float(s[0]) if s.numel() else 0.0
    cut = rank_tolerance(s1, max_dim or n) if tol is None else tol
    keep = s[s > cut]
    r = keep.numel()
    out = {"rank": float(r), "rank_ratio": r / n,
           "n_sv_above": float((s > threshold).sum()), "n_sv_above_ratio": float((s > threshold).sum()) / n}
    if r == 0:
        fill = math.nan if zero_matrix == "skip" else 0.0
        return out | {"effective_rank": fill, "effective_rank_score": fill, "stable_rank": fill,
                      "stable_rank_ratio": fill, "spectral_gap": fill, "singular_value_ratio": fill}
    p = keep / keep.sum()
    erank = float(torch.exp(-(p * p.log()).sum()))
    srank = float((keep**2).sum() / keep[0] ** 2)
    s2 = float(keep[1]) if r > 1 else 0.0
    s1 = float(keep[0])
    return out | {"effective_rank": erank, "effective_rank_score": erank / n, "stable_rank": srank,
                  "stable_rank_ratio": srank / n, "spectral_gap": (s1 - s2) / s1, "singular_value_ratio": s2 / s1}


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean across matrices, key by key, skipping NaN (the study's per-checkpoint number)."""
    acc: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            acc.setdefault(k, []).append(v)
    out = {}
    for k, vs in acc.items():
        ok = [v for v in vs if not math.isnan(v)]
        out[k] = sum(ok) / len(ok) if ok else math.nan
    return out


def weight_updates(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """dW = W_after - W_before for every name of `before` (both must have it, same shape)."""
    missing = set(before) - set(after)
    if missing:
        raise LensError(f"the later checkpoint lacks {sorted(missing)[:5]}")
    out = {}
    for n, wa in before.items():
        if after[n].shape != wa.shape:
            raise LensError(f"{n!r} changed shape: {tuple(wa.shape)} -> {tuple(after[n].shape)}")
        out[n] = after[n].detach() - wa.detach()
    return out


@dataclass
class UpdateNorms:
    """Update magnitudes (docs/study.md S4) of dW = W_after - W_before."""

    fro: dict[str, float]  # ||dW||_F per matrix
    relative: dict[str, float]  # ||dW||_F / ||W_before||_F per matrix (inf if W_before = 0)
    global_ratio: float  # sqrt(sum ||dW||_F^2) / sqrt(sum ||W_before||_F^2), the study's total_update_to_prev_ratio


def update_norms(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> UpdateNorms:
    """Per-matrix and global update magnitudes, accumulated in fp64."""
    fro, rel = {}, {}
    sum_d2 = sum_w2 = 0.0
    for n, dw in weight_updates(before, after).items():
        d2 = float(dw.double().pow(2).sum())
        w2 = float(before[n].detach().double().pow(2).sum())
        fro[n] = math.sqrt(d2)
        rel[n] = math.sqrt(d2 / w2) if w2 > 0 else math.inf
        sum_d2, sum_w2 = sum_d2 + d2, sum_w2 + w2
    return UpdateNorms(fro, rel, math.sqrt(sum_d2 / sum_w2) if sum_w2 > 0 else math.inf)
