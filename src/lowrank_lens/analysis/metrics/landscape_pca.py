"""1-D loss landscape along the study's "top-K PCA" directions: ES_pca1, ES_pcaK, DV_pcaK (docs/study.md §2,
L3-L5).

What the study's code calls PCA is NOT a PCA of the optimisation trajectory (that is `trajectory_pca`):
component j is, for every 2-D parameter W = U diag(s) V^T of the *same* checkpoint (trained
parameterization, so CoLA/SLTrain factors and ReLoRA's W0 and adapters each count as a matrix), the rank-1
slice u_j v_j^T, with 1-D tensors held fixed or moved radially (maths/directions.py SVD_VARIANTS):
  - 'svd_sigma' (variant B, scripts 3b_/4b_, the later refinement; default): s_j u_j v_j^T, 1-D zero;
  - 'svd_unit' (variant A, scripts 2_/3_): unit u_j v_j^T, 1-D gains d = w (scaled by 1 + alpha);
  - 'svd_unit_zero' (the study's "nosigma" verification flag of the variant-B script): u_j v_j^T, 1-D zero.
1-D parameters are not matrices here, as in the study: SLTrain's sparse values (stored 1-D) are held fixed
or moved radially with the gains. One curve per component j = 1..k; ES_pcaK is the ES formula on the
mean of the first K curves and DV_pcaK the mean over alpha of their variance (the L1/L2 formulas,
maths/landscape.py).

Grid: centred with an odd number of points (default 25). The study's variant-B grid
arange(-0.05, 0.0501, 0.004) has 26 points, so its "centre" index 13 is alpha = +0.002 rather than 0 —
a bug we do not reproduce (an even `points` raises). alpha_max defaults to the variant's study value
(0.05 for B and its "nosigma" flag, 0.25 for A); variant A's 101-point grid is `points=101`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import LensError
from ..base import Metric, Result, finite_or_nan
from ..charts import Chart, lines_by_method
from ..context import Context
from ..maths.curvature import second_derivative_at_zero
from ..maths.directions import SVD_VARIANTS, SVDDirections
from ..maths.landscape import landscape_summary
from ..subjects import Subject
from . import register
from .landscape_random import (
    alpha_grid,
    check_engine,
    check_grid,
    curve_scalars,
    curves_along,
    landscape_grid,
    native_params,
)

STUDY_ALPHA_MAX = {"svd_sigma": 0.05, "svd_unit": 0.25, "svd_unit_zero": 0.05}
"""The study's grid half-width per variant (docs/study.md L3; 'svd_unit_zero' shares variant B's script)."""


@dataclass
class LandscapePCAConfig:
    variant: str = "svd_sigma"
    """'svd_sigma' (variant B: s_j u_j v_j^T, 1-D fixed), 'svd_unit' (variant A: u_j v_j^T, 1-D radial) or
    'svd_unit_zero' (u_j v_j^T, 1-D fixed)."""
    k: int = 10
    """Number of singular components evaluated (one curve each)."""
    ks: tuple[int, ...] = (1, 5, 10)
    """K values reported as ES_pcaK / DV_pcaK (the study: 1, 5, 10); values > k are dropped, k is added."""
    alpha_max: float | None = None
    """Half-width of the alpha grid; None = the variant's study value (0.05 for B, 0.25 for A)."""
    points: int = 25
    """Grid points, odd, centred on alpha = 0 (the study's even 26-point grid is off-centre; not reproduced)."""
    engine: str = "auto"
    """losses_along_directions method: auto (vmap on CUDA, loop on CPU), vmap, loop, compiled."""
    chunk_size: int = 4
    """Points of one direction per batched call with engine 'vmap'."""

    def __post_init__(self) -> None:
        if self.variant not in SVD_VARIANTS:
            raise LensError(f"landscape_pca.variant {self.variant!r} is not one of {', '.join(SVD_VARIANTS)}")
        if self.alpha_max is None:
            self.alpha_max = STUDY_ALPHA_MAX[self.variant]
        check_grid("landscape_pca", self.alpha_max, self.points)
        check_engine("landscape_pca", self.engine, self.chunk_size)
        if self.k < 1:
            raise LensError(f"landscape_pca.k must be >= 1, got {self.k}")
        self.ks = tuple(int(x) for x in self.ks)
        if any(x < 1 for x in self.ks):
            raise LensError(f"landscape_pca.ks must hold numbers >= 1, got {self.ks}")

    def reported(self) -> list[int]:
        """The K values with scalars: ks <= k, plus k itself."""
        return sorted({x for x in self.ks if x <= self.k} | {self.k})


@register
class LandscapePCA(Metric):
    name = "landscape_pca"
    dimension = "landscape"
    subject_kind = "checkpoint"
    headline = "es_pca1"
    Config = LandscapePCAConfig
    definition = ("ES and DV of L(theta + alpha d_j) along the study's 'top-K PCA' directions: per weight matrix "
                  "of the same checkpoint, the j-th singular slice s_j u_j v_j^T (not a trajectory PCA); ES_pca1, "
                  "ES_pcaK and DV_pcaK over the mean/variance of the first K curves (docs/study.md L3-L5).")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        cfg = self.cfg
        (ckpt,) = subject.checkpoints
        model = ctx.load(ckpt).model
        params0 = native_params(model)
        alphas = alpha_grid(cfg.alpha_max, cfg.points)
        dirs = SVDDirections(params0, cfg.k, cfg.variant)  # the top-k factors; one direction built at a time
        curves = curves_along(ctx, model, params0, dirs.__getitem__, cfg.k, alphas, ctx.batches(subject.home),
                              cfg.engine, cfg.chunk_size, f"{self.name} {ckpt.run_id}@{ckpt.step}")  # [k, G]
        del dirs
        s = landscape_summary(curves[:1], alphas)
        scalars = {"es_pca1": s["expected_sharpness"], "loss_centre": s["centre_loss"],
                   "loss_min_pca1": s["min_loss"], "centre_minus_min_pca1": s["centre_minus_min"],
                   "d2_at_zero_pca1": float(second_derivative_at_zero(curves[0], alphas))}
        for K in cfg.reported():
            sc = curve_scalars(curves[:K], alphas, f"_pca{K}")
            scalars[f"es_pca{K}"] = sc[f"es_pca{K}"]
            if K > 1:  # the variance across a single curve is identically 0
                scalars[f"dv_pca{K}"] = sc[f"dv_pca{K}"]
        return Result(metric=self.name, subject=subject.describe(),
                      scalars={k: finite_or_nan(v) for k, v in scalars.items()},
                      arrays={"alphas": alphas, "curves": curves.numpy()},
                      info={"variant": cfg.variant, "k": cfg.k, "reported_k": cfg.reported(),
                            "n_parameters": sum(t.numel() for t in params0.values()),
                            "n_matrices": sum(1 for t in params0.values() if t.ndim >= 2)})

    def charts(self, results: list[Result]) -> list[Chart]:
        if not results:
            return []
        top = max(self.cfg.reported())
        out = [landscape_grid(results, "landscape_pca1_curves", lambda r: r.arrays["curves"][:1], band=False,
                              title=f"loss along the top-1 singular direction ({self.cfg.variant})")]
        if top > 1:
            out.append(landscape_grid(results, f"landscape_pca{top}_curves", lambda r: r.arrays["curves"][:top],
                                      band=True,
                                      title=f"mean loss along the top-{top} singular directions (+-3 sigma)"))
        out.append(lines_by_method(results, "es_pca1", "landscape_pca_es_pca1", "ES_pca1"))
        if top > 1:
            out += [lines_by_method(results, f"es_pca{top}", f"landscape_pca_es_pca{top}", f"ES_pca{top}"),
                    lines_by_method(results, f"dv_pca{top}", f"landscape_pca_dv_pca{top}", f"DV_pca{top}")]
        return [c for c in out if c is not None]
