"""1-D loss landscape along the principal axes of the optimisation trajectory (Li et al. 2018, §6).

This is what the study's README calls "top-K PCA directions of the trajectory" (docs/study.md §2 L3, the
"PCA wording" note), as opposed to the per-matrix singular directions its code actually uses
(`landscape_pca`). Here: the rows theta_i - theta_final over the run's selected checkpoints (native
parameterization, every parameter, the same names at every checkpoint of the run) are PCA'd as in
sklearn (centred; maths/directions.py `trajectory_pca`, by the n x n Gram matrix in fp64, so no
[n, P] matrix is ever stacked); the axes are unit vectors over all parameters. Around the final
checkpoint, L(theta_final + alpha v_j) is evaluated on a centred grid for the top `components` axes and
summarised with the L1/L2 formulas: ES_traj1, ES_trajC (mean of the C curves), DV_trajC.

The study has no trajectory-PCA landscape, so nothing here is its protocol. alpha_max defaults to the
trajectory's own extent along the first axis, max_i |(theta_i - theta_final) . v_1| (Li et al. plot over
the span of the projected path); that makes the grid run-dependent, so ES across runs is compared at
different alpha ranges unless alpha_max is fixed. The PCA reads fp32 weights; curves use the
evaluation dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import LensError
from ..base import Metric, Result, finite_or_nan
from ..charts import Chart, Series, one_legend_entry, run_label
from ..context import Context
from ..maths.curvature import second_derivative_at_zero
from ..maths.directions import trajectory_pca
from ..maths.landscape import landscape_summary
from ..subjects import Subject
from . import register
from .landscape_random import alpha_grid, check_engine, check_grid, curve_scalars, curves_along, native_params


@dataclass
class TrajectoryPCAConfig:
    components: int = 2
    """Number of principal axes of the trajectory evaluated (Li et al.: 2); needs >= components + 1
    checkpoints in the run's selection."""
    alpha_max: float | None = None
    """Half-width of the grid along each unit axis; None = the trajectory's extent along axis 1."""
    points: int = 25
    """Grid points, odd, centred on alpha = 0 (the final checkpoint)."""
    one_d: str = "keep"
    """1-D tensors in the PCA: 'keep' or 'zero' (Li et al.'s ignore='biasbn': gains not moved)."""
    engine: str = "auto"
    """losses_along_directions method: auto (vmap on CUDA, loop on CPU), vmap, loop, compiled."""
    chunk_size: int = 4
    """Points of one direction per batched call with engine 'vmap'."""

    def __post_init__(self) -> None:
        check_grid("trajectory_pca", 1.0 if self.alpha_max is None else self.alpha_max, self.points)
        check_engine("trajectory_pca", self.engine, self.chunk_size)
        if self.components < 1:
            raise LensError(f"trajectory_pca.components must be >= 1, got {self.components}")
        if self.one_d not in ("keep", "zero"):
            raise LensError(f"trajectory_pca.one_d {self.one_d!r} is not one of keep, zero")


@register
class TrajectoryPCAMetric(Metric):
    name = "trajectory_pca"
    dimension = "landscape"
    subject_kind = "run"
    Config = TrajectoryPCAConfig
    definition = ("ES and DV of L(theta_final + alpha v_j) along the top principal axes v_j of the trajectory "
                  "theta_i - theta_final over a run's checkpoints (Li et al. 2018 PCA, not the study's per-matrix "
                  "'PCA'), with the variance each axis explains (docs/study.md §2 L3 note).")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        cfg = self.cfg
        ckpts = subject.checkpoints
        final = ckpts[-1]
        if len(ckpts) < cfg.components + 1:
            return Result(metric=self.name, subject=subject.describe(),
                          skipped=f"{len(ckpts)} checkpoints span at most {len(ckpts) - 1} trajectory axes; "
                                  f"{cfg.components} asked")
        # fp32 weights for the PCA, in host memory (every checkpoint of a run: 11 x 5.4 GB at 1b would crowd a
        # GPU; the PCA is a few dot products per parameter); the references stay alive here even when the
        # context's LRU drops them.
        states = [native_params(ctx.load(c, dtype=torch.float32, device="cpu").model) for c in ckpts]
        names = list(states[-1])
        for c, s in zip(ckpts, states, strict=True):
            if list(s) != names or any(s[n].shape != states[-1][n].shape for n in names):
                raise LensError(f"checkpoint {c.path} does not have the parameters of {final.path} "
                                "(trajectory PCA needs one parameterization along the run)")
        try:
            pca = trajectory_pca(states, cfg.components, one_d=cfg.one_d)
        except LensError as err:  # e.g. a trajectory that spans fewer independent directions
            return Result(metric=self.name, subject=subject.describe(), skipped=str(err))
        coords = pca.coords.numpy()  # [n, C]
        del states
        extent = float(np.abs(coords[:, 0]).max())
        alpha_max = extent if cfg.alpha_max is None else cfg.alpha_max
        if not (math.isfinite(alpha_max) and alpha_max > 0):
            return Result(metric=self.name, subject=subject.describe(),
                          skipped=f"the trajectory has zero extent along its first axis ({extent})")
        alphas = alpha_grid(alpha_max, cfg.points)

        model = ctx.load(final).model
        params0 = native_params(model)

        def direction(j: int) -> dict[str, torch.Tensor]:
            return {n: t.to(device=params0[n].device, dtype=params0[n].dtype) for n, t in pca.directions[j].items()}

        curves = curves_along(ctx, model, params0, direction, cfg.components, alphas, ctx.batches(subject.home),
                              cfg.engine, cfg.chunk_size, f"{self.name} {final.run_id}")  # [C, G]
        C = cfg.components
        s = landscape_summary(curves[:1], alphas)
        scalars = {f"explained_pc{j + 1}": float(pca.explained_variance_ratio[j]) for j in range(C)}
        scalars.update(es_traj1=s["expected_sharpness"], loss_centre=s["centre_loss"],
                       d2_at_zero_traj1=float(second_derivative_at_zero(curves[0], alphas)), alpha_max=alpha_max)
        if C > 1:
            scalars.update(curve_scalars(curves, alphas, f"_traj{C}"))
        return Result(metric=self.name, subject=subject.describe(),
                      scalars={k: finite_or_nan(v) for k, v in scalars.items()},
                      arrays={"alphas": alphas, "curves": curves.numpy(),
                              "explained": pca.explained_variance_ratio.numpy(), "coords": coords,
                              "steps": np.array([c.step for c in ckpts])},
                      info={"steps": [c.step for c in ckpts], "alpha_max": alpha_max,
                            "alpha_max_source": "trajectory extent" if cfg.alpha_max is None else "config",
                            "one_d": cfg.one_d, "n_parameters": sum(t.numel() for t in params0.values())})

    def charts(self, results: list[Result]) -> list[Chart]:
        """The curves at the final step: one view per axis ("PC1", ...), one curve per run coloured by method,
        the share of the trajectory's variance each axis explains in the hover."""
        rs = [r for r in results if "curves" in r.arrays]
        if not rs:
            return []
        C = max(r.arrays["curves"].shape[0] for r in rs)
        series = []
        for j in range(C):
            for r in sorted(rs, key=run_label):
                if j >= r.arrays["curves"].shape[0]:
                    continue
                run, method = run_label(r)
                n = r.arrays["alphas"].size
                ev = float(r.arrays["explained"][j])
                series.append(Series(
                    r.arrays["alphas"].tolist(), r.arrays["curves"][j].tolist(), name=run, method=method,
                    mode="lines", width=1.4, view=f"PC{j + 1}",
                    hover={"run": [run] * n, "seed": [r.subject.get("seed")] * n, "scale": [r.subject.get("scale")] * n,
                           "explained variance": [f"{100 * ev:.1f}%"] * n, "final step": [r.subject.get("step")] * n}))
        return [Chart(name="trajectory_pca_curves", title="loss along the trajectory's principal axes (final step)",
                      x_label="alpha (unit axis)", y_label="val loss", series=one_legend_entry(series),
                      views=[f"PC{j + 1}" for j in range(C)], view_label="principal axis")]
