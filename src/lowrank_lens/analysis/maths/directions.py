"""Directions in parameter space for 1-D loss landscapes (docs/study.md §2, L1-L5; docs/ecosystem.md §2.1).

A direction is a dict {parameter name: tensor shaped like the parameter}. Three families:

- `random_direction(s)`: i.i.d. Gaussian per tensor (L1/L2). Normalisation 'none' is the study's default
  ("Gaussian", the most-case landscape of Chen et al.); 'filter' rescales every slice along dim 0 to the
  norm of the same slice of W (Li et al. 2018, the per-output-row rule for nn.Linear and the per-token rule
  for embeddings); 'layer' rescales the whole tensor to ||W|| (the study's "WeightNormGaussian").
  1-D tensors (RMSNorm gains) get 'zero', 'radial' (d = w) or 'gaussian' (only with 'none').
- `weight_svd_directions`: what the study's code calls "top-K PCA": per-matrix singular directions of
  the *same* checkpoint (L3-L5), in its two variants.
- `trajectory_pca`: true PCA of an optimisation trajectory (Li et al. 2018), by the n x n Gram matrix.

Every random tensor comes from its own generator seeded by (seed, direction index, parameter name), so a
direction is regenerable alone and a tensor's values do not depend on which other tensors are included.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import LensError

Direction = dict[str, Tensor]
NORMS = ("none", "filter", "layer")
ONE_D_MODES = ("zero", "radial", "gaussian")
SVD_VARIANTS: dict[str, tuple[str, str]] = {
    "svd_unit": ("unit", "radial"),    # variant A (scripts 2_/3_): u_k v_k^T; 1-D gains scaled by (1 + a)
    "svd_sigma": ("sigma", "zero"),    # variant B (scripts 3b_/4b_): sigma_k u_k v_k^T; 1-D held fixed
    "svd_unit_zero": ("unit", "zero"),  # the study's "nosigma" verification variant
}
_EPS = 1e-10  # the same guard as Li et al.'s normalisation, so zero rows stay zero


def _tensor_seed(seed: int, index: int, name: str) -> int:
    # SeedSequence mixes (seed, index, name) so nearby seeds give unrelated streams.
    state = np.random.SeedSequence([seed, index, zlib.crc32(name.encode())]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def _check_modes(norm: str, one_d: str | None) -> str:
    if norm not in NORMS:
        raise LensError(f"direction norm {norm!r} is not one of {NORMS}")
    one_d = ("gaussian" if norm == "none" else "zero") if one_d is None else one_d
    if one_d not in ONE_D_MODES:
        raise LensError(f"one_d mode {one_d!r} is not one of {ONE_D_MODES}")
    if one_d == "gaussian" and norm != "none":
        raise LensError(f"one_d='gaussian' only goes with norm='none' (got norm={norm!r}); use 'zero' or 'radial'")
    return one_d


def _normalize_tensor(d: Tensor, w: Tensor, norm: str, one_d: str) -> Tensor:
    if w.ndim <= 1:
        return {"zero": torch.zeros_like(d), "radial": w.to(d.dtype).clone(), "gaussian": d.clone()}[one_d]
    if norm == "filter":
        # d, w: [n_out, ...]; one scale per slice along dim 0 (one output neuron / one token row).
        scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + _EPS)  # [n_out]
        return d * scale.view(-1, *([1] * (d.ndim - 1))).to(d.dtype)
    if norm == "layer":
        return d * (w.norm() / (d.norm() + _EPS)).to(d.dtype)
    return d.clone()


def normalize_direction(direction: Mapping[str, Tensor], params: Mapping[str, Tensor],
                        norm: str = "filter", one_d: str | None = None) -> Direction:
    """Rescale a direction to the weights (a new dict; inputs untouched).

    norm: 'none' | 'filter' (each slice d[i] *= ||w[i]|| / (||d[i]|| + 1e-10)) | 'layer' (whole tensor).
    one_d: what tensors with ndim <= 1 get: 'zero', 'radial' (d = w) or 'gaussian' (keep d; norm 'none').
    """
    one_d = _check_modes(norm, one_d)
    return {name: _normalize_tensor(d, params[name].detach(), norm, one_d) for name, d in direction.items()}


def random_direction(params: Mapping[str, Tensor], seed: int, index: int = 0, *, norm: str = "none",
                     one_d: str | None = None) -> Direction:
    """Direction number `index` of the family `seed`: N(0, 1) per entry, then `normalize_direction`.

    Drawn in fp32 on CPU (so values do not depend on device), then cast to each parameter's dtype/device.
    """
    one_d = _check_modes(norm, one_d)
    out: Direction = {}
    for name, w in params.items():
        g = torch.Generator().manual_seed(_tensor_seed(seed, index, name))
        d = torch.randn(tuple(w.shape), generator=g, dtype=torch.float32)
        d = _normalize_tensor(d, w.detach().float().cpu(), norm, one_d)
        out[name] = d.to(device=w.device, dtype=w.dtype)
    return out


def random_directions(params: Mapping[str, Tensor], n: int, seed: int, *, norm: str = "none",
                      one_d: str | None = None) -> list[Direction]:
    """Directions 0..n-1 of the family `seed` (docs/study.md L1: the study uses n = 100, unnormalised)."""
    return [random_direction(params, seed, i, norm=norm, one_d=one_d) for i in range(n)]


def weight_svd_directions(params: Mapping[str, Tensor], k: int, variant: str = "svd_sigma") -> list[Direction]:
    """Components 1..k of the study's per-matrix singular directions ("top-K PCA", docs/study.md L3-L5), all
    built at once (k full-size directions; `SVDDirections` builds one at a time from the factors)."""
    lazy = SVDDirections(params, k, variant)
    return [lazy[j] for j in range(k)]


class SVDDirections:
    """The study's per-matrix singular directions ("top-K PCA", docs/study.md L3-L5), kept as factors.

    For each matrix W = U diag(s) V^T (tensors with ndim >= 2 are read as [shape[0], -1]) component j is
    u_j v_j^T ('unit', unit Frobenius norm) or s_j u_j v_j^T ('sigma'); 1-D tensors get d = w ('radial')
    or 0 ('zero'); see SVD_VARIANTS. A matrix with fewer than j singular values gets a zero component.
    u_j v_j^T does not depend on the SVD's sign choice. SVD in fp64, cast back to the parameter's dtype.
    Only the top k singular pairs are kept (k (m + n) numbers per matrix, not k full-size directions: 40 GB
    at 1b with k = 10); self[j] builds component j when asked.
    """

    def __init__(self, params: Mapping[str, Tensor], k: int, variant: str = "svd_sigma") -> None:
        if variant not in SVD_VARIANTS:
            raise LensError(f"SVD direction variant {variant!r} is not one of {sorted(SVD_VARIANTS)}")
        if k < 1:
            raise LensError(f"number of SVD components must be >= 1, got {k}")
        self.k, (self.scale, self.one_d) = k, SVD_VARIANTS[variant]
        self.params = {n: w.detach() for n, w in params.items()}
        self.factors: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for name, w in self.params.items():
            if w.ndim > 1:
                u, s, vh = torch.linalg.svd(w.reshape(w.shape[0], -1).double(), full_matrices=False)
                self.factors[name] = (u[:, :k].clone(), s[:k].clone(), vh[:k].clone())  # [m, k], [k], [k, n]

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, j: int) -> Direction:
        if not 0 <= j < self.k:
            raise IndexError(j)
        out: Direction = {}
        for name, w in self.params.items():
            if name not in self.factors:
                out[name] = w.clone() if self.one_d == "radial" else torch.zeros_like(w)
                continue
            u, s, vh = self.factors[name]
            if j >= s.numel():
                out[name] = torch.zeros_like(w)
                continue
            rank1 = torch.outer(u[:, j], vh[j]) * (s[j] if self.scale == "sigma" else 1.0)  # [m, n]
            out[name] = rank1.reshape(w.shape).to(w.dtype)
        return out


@dataclass
class TrajectoryPCA:
    """Result of `trajectory_pca`. directions[j] is the unit-norm j-th principal axis (a Direction)."""

    directions: list[Direction]
    explained_variance_ratio: Tensor  # [k], like sklearn's PCA.explained_variance_ratio_
    singular_values: Tensor  # [k], of the centred row matrix
    coords: Tensor  # [n, k]: (theta_i - theta_final) . direction_j, Li et al.'s trajectory projection


def trajectory_pca(checkpoints: Sequence[Mapping[str, Tensor]], n_components: int = 2, *,
                   final: Mapping[str, Tensor] | None = None, one_d: str = "keep") -> TrajectoryPCA:
    """PCA of the rows theta_i - theta_final (Li et al. 2018, `setup_PCA_directions`), without stacking them.

    Equal to sklearn's PCA(n_components).fit(X) on X[n, P] = stacked rows (sklearn centres X), computed
    as in docs/ecosystem.md §2.1: the Gram matrix G = X X^T is accumulated one parameter block at a time
    (fp64), centred as C G C with C = I - 11^T/n, eigendecomposed, and each axis is formed block by block
    as v_j = X^T u_j / sigma_j. X may stay uncentred there because u_j (an eigenvector with sigma_j > 0
    of C G C) is orthogonal to the ones vector, so X_c^T u_j = X^T C u_j = X^T u_j.
    Sign: each axis is flipped so its largest-|.| entry is positive (sklearn's current svd_flip rule).
    `final` defaults to the last checkpoint; a checkpoint equal to `final` contributes a zero row, as in
    Li et al. one_d: 'keep' or 'zero' (their ignore='biasbn': 1-D rows set to 0).
    """
    if one_d not in ("keep", "zero"):
        raise LensError(f"trajectory PCA one_d {one_d!r} is not one of ('keep', 'zero')")
    n = len(checkpoints)
    final = checkpoints[-1] if final is None else final
    if n < 2 or not 1 <= n_components <= n - 1:
        raise LensError(f"trajectory PCA of {n} checkpoints gives at most {max(n - 1, 0)} axes, "
                        f"asked for {n_components}")

    def rows(name: str) -> Tensor:  # [n, p_block], fp64
        ref = final[name].detach()
        r = torch.stack([c[name].detach().double() - ref.double() for c in checkpoints]).reshape(n, -1)
        return torch.zeros_like(r) if one_d == "zero" and ref.ndim <= 1 else r

    gram = torch.zeros(n, n, dtype=torch.float64)
    for name in final:
        r = rows(name)
        gram += (r @ r.T).cpu()
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    lam, vecs = torch.linalg.eigh(centre @ gram @ centre)  # ascending
    lam, vecs = lam.flip(0).clamp_min(0), vecs.flip(1)  # descending; [n], [n, n]
    if lam[n_components - 1] <= 1e-12 * max(float(lam[0]), 1e-300):
        raise LensError(f"the trajectory spans fewer than {n_components} independent directions")
    sig = lam[:n_components].sqrt()  # [k]
    u = vecs[:, :n_components]  # [n, k]
    dirs: list[Direction] = [{} for _ in range(n_components)]
    best = torch.zeros(n_components, dtype=torch.float64)  # signed entry of largest |.| per axis
    for name, ref in final.items():
        r = rows(name)  # [n, p_block]
        v = r.T @ u.to(r.device) / sig.to(r.device)  # [p_block, k]
        if v.numel():
            idx = v.abs().argmax(dim=0)  # [k]
            cand = v[idx, torch.arange(n_components)].cpu()
            best = torch.where(cand.abs() > best.abs(), cand, best)
        for j in range(n_components):
            dirs[j][name] = v[:, j].reshape(ref.shape)
    sign = torch.where(best < 0, -1.0, 1.0).double()
    for j, d in enumerate(dirs):
        for name, ref in final.items():
            d[name] = (d[name] * sign[j]).to(device=ref.device, dtype=ref.dtype)
    # Coordinates of the uncentred rows: X v_j = G u_j / sigma_j (no second pass over the parameters).
    coords = gram @ u / sig * sign  # [n, k]
    return TrajectoryPCA(dirs, lam[:n_components] / lam.sum(), sig, coords)
