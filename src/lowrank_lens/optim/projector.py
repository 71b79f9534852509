"""GaLore's SVD gradient projector as pure tensor functions (docs/methods.md §2.2 steps 2 and 4; §8 item 7).

For a weight W of torch layout m x n (m = out features, n = in features) and its gradient G (m x n):

- m >= n (tall or square: q/k/v/o, gate/up): right projector Q = Vᵀ[:r] (r x n);
  project R = G Qᵀ (m x r), project back N Q (m x n).
- m <  n (wide: down_proj): left projector P = U[:, :r] (m x r);
  project R = Pᵀ G (r x n), project back P N (m x n).

The basis comes from an SVD of the *current* gradient, computed in fp32 and cast back to the gradient's
dtype (bf16 in the reference runs), and is refreshed at steps 0, T, 2T, ... The side is fixed by the
weight's shape, never by "hidden vs intermediate". Unlike the reference, the scale α is *not* applied here:
`project_back` is the plain linear map and the optimizers apply α where the method puts it (GaLore and Fira's
code mode scale only the subspace term; Fira's paper mode scales the whole update).

The projector's state is two plain tensors (the basis and a bool side flag), so optimizer state dicts load
with `torch.load(weights_only=True)`; the reference pickles a projector object instead (docs/methods.md §1.5,
ms-swift PR #10161).

A non-converging SVD (GaLore issue #58, docs/methods.md §2.5) must not end a run: `orthogonal_basis` retries in
float64, then on a slightly jittered gradient, and finally keeps the previous basis (or, before any basis
exists, the coordinate axes), each time with a warning.
"""

from __future__ import annotations

import warnings

import torch

# Relative size of the jitter added on the last SVD retry: far below the gradient's own noise,
# enough to split the repeated singular values that make LAPACK's divide-and-conquer fail.
_JITTER = 1e-6
_JITTER_SEED = 0


class SVDFallbackWarning(RuntimeWarning):
    """The projector's SVD failed on the first try; a fallback basis was used (GaLore issue #58)."""


def is_right(shape: torch.Size | tuple[int, ...]) -> bool:
    """True when the right projector applies: m >= n for a gradient of shape (m, n) (docs/methods.md §2.2)."""
    m, n = shape
    return m >= n


def needs_refresh(step: int, update_proj_gap: int, has_basis: bool) -> bool:
    """Refresh at steps 0, T, 2T, ... (the per-parameter counter *before* it is incremented), or when
    no basis exists yet (docs/methods.md §2.2 step 2)."""
    return not has_basis or step % update_proj_gap == 0


def project(grad: torch.Tensor, basis: torch.Tensor, right: bool) -> torch.Tensor:
    """G (m x n) -> R: G Qᵀ (m x r) with Q (r x n) if right, else Pᵀ G (r x n) with P (m x r)."""
    return grad @ basis.t() if right else basis.t() @ grad


def project_back(low: torch.Tensor, basis: torch.Tensor, right: bool) -> torch.Tensor:
    """N -> full size (m x n): N Q if right (N is m x r), else P N (N is r x n). No α here."""
    return low @ basis if right else basis @ low


def orthogonal_basis(grad: torch.Tensor, rank: int, right: bool,
                     previous: torch.Tensor | None = None) -> torch.Tensor:
    """The rank-r singular basis of `grad` on the chosen side, in `grad`'s dtype, contiguous.

    Right: Vᵀ[:r] (r x n); left: U[:, :r] (m x r); r is clipped to min(m, n) as `[:r]` slicing does
    in the reference. Falls back instead of raising when the SVD fails (see the module docstring).
    """
    attempts = (("float32", lambda: grad.float()),
                ("float64", lambda: grad.double()),
                ("float64 + jitter", lambda: _jittered(grad.double())))
    errors: list[str] = []
    for label, matrix in attempts:
        try:
            basis = _svd_basis(matrix(), rank, right)
        except torch.OutOfMemoryError:
            raise  # out of memory is not a convergence failure: a fallback basis would hide it
        except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
            errors.append(f"{label}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            continue
        if errors:
            _warn(f"GaLore projector SVD failed ({'; '.join(errors)}); the {label} retry succeeded")
        return _compact(basis).to(grad.dtype)
    if previous is not None:
        _warn(f"GaLore projector SVD failed ({'; '.join(errors)}); keeping the previous projector")
        return previous
    # No basis yet and no SVD possible (in practice: a non-finite gradient). The coordinate axes keep
    # the run alive; the next refresh at a multiple of T replaces them.
    _warn(f"GaLore projector SVD failed ({'; '.join(errors)}) before any projector existed; "
          "using the coordinate axes until the next refresh")
    m, n = grad.shape
    k = min(rank, m, n)
    eye = torch.eye(n if right else m, dtype=grad.dtype, device=grad.device)
    return (eye[:k] if right else eye[:, :k]).contiguous()


def _svd_basis(matrix: torch.Tensor, rank: int, right: bool) -> torch.Tensor:
    """One SVD attempt; a non-finite result counts as a failure (it would poison every later step)."""
    U, _, Vh = torch.linalg.svd(matrix, full_matrices=False)  # U: m x k, Vh: k x n, k = min(m, n)
    basis = Vh[:rank] if right else U[:, :rank]
    if not torch.isfinite(basis).all():
        raise RuntimeError("SVD returned non-finite values")
    return basis


def _compact(view: torch.Tensor) -> torch.Tensor:
    """A dense copy of the r kept rows (Vᵀ[:r]) or columns (U[:, :r]) in the SVD's own memory order.

    LAPACK returns U and Vᵀ column-major; keeping that order makes `project` run the same matmul kernels
    as the reference (bitwise-equal results on CPU), and the copy makes the state hold r·n numbers instead
    of pinning (and saving) the whole k x n factor behind a slice view.
    """
    column_major = view.dim() == 2 and view.stride(0) < view.stride(1)
    return view.t().contiguous().t() if column_major else view.contiguous()


def _jittered(matrix: torch.Tensor) -> torch.Tensor:
    """matrix + tiny Gaussian noise from a fixed seed, so the retry is reproducible (docs/design.md conv. 7)."""
    gen = torch.Generator(device=matrix.device).manual_seed(_JITTER_SEED)
    noise = torch.randn(matrix.shape, generator=gen, dtype=matrix.dtype, device=matrix.device)
    scale = _JITTER * matrix.norm() / max(1.0, matrix.numel() ** 0.5)
    return matrix + scale * noise


def _warn(msg: str) -> None:
    warnings.warn(msg, SVDFallbackWarning, stacklevel=4)
