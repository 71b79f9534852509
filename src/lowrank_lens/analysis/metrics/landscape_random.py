"""1-D loss landscape along random Gaussian directions: ES_rand and DV_rand (docs/study.md §2, L1 and L2).

For D directions d_i (every parameter tensor of the checkpoint in its trained parameterization, i.i.d.
N(0, 1): embeddings, RMSNorm gains, LM head, CoLA/SLTrain factors, ReLoRA's frozen W0 and adapters alike;
buffers such as SLTrain's sparse index are not parameters and never move) the curves
L_i(alpha) = L(theta0 + alpha d_i) are evaluated on a centred alpha grid, and
  ES = (1/K) sum_k [ (Lbar(alpha_{c+k}) + Lbar(alpha_{c-k})) / 2 - Lbar(alpha_c) ]   (Lbar = mean over i),
  DV = mean over grid points of Var_i L_i(alpha)                                       (ddof 0).
Defaults are the study's protocol: D = 100 unnormalised Gaussian directions ("most-case" landscape of
Chen et al.), alpha in [-0.003, 0.003] at 25 points (step 2.5e-4, centre index 12). Deviation: the
study's directions were unseeded; ours are regenerable from `seed` (maths/directions.py).

This module also holds the helpers the other landscape plugins share (grid, curve evaluation, plots).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import LensError
from ..base import Metric, Result, finite_or_nan, part_range
from ..charts import Chart, Series, lines_by_method, one_legend_entry, run_label
from ..context import Context
from ..maths.curvature import second_derivative_at_zero
from ..maths.directions import NORMS, ONE_D_MODES, Direction, random_direction
from ..maths.landscape import (
    ENGINE_METHODS,
    direction_variance,
    expected_sharpness,
    landscape_summary,
    losses_along_directions,
)
from ..maths.loss import eval_mode, mean_nll
from ..subjects import Subject
from . import register

# ---- helpers shared by landscape_random, landscape_pca and trajectory_pca ------------------------------


def check_grid(section: str, alpha_max: float, points: int) -> None:
    """A centred grid needs an odd number >= 3 of points and alpha_max > 0 (LensError otherwise)."""
    if points < 3 or points % 2 == 0:
        raise LensError(f"{section}.points must be odd and >= 3 so that alpha = 0 is the middle point "
                        f"(got {points}); e.g. {points + 1 if points % 2 == 0 else 3}")
    if not (math.isfinite(alpha_max) and alpha_max > 0):
        raise LensError(f"{section}.alpha_max must be a positive number, got {alpha_max}")


def check_engine(section: str, engine: str, chunk_size: int) -> None:
    if engine not in ENGINE_METHODS:
        raise LensError(f"{section}.engine {engine!r} is not one of {', '.join(ENGINE_METHODS)}")
    if chunk_size < 1:
        raise LensError(f"{section}.chunk_size must be >= 1, got {chunk_size}")


def alpha_grid(alpha_max: float, points: int) -> np.ndarray:
    """linspace(-alpha_max, alpha_max, points) written as alpha_max * k / K, k = -K..K, so that the
    middle point is exactly 0 (the engine evaluates alpha = 0 once) and the grid is exactly symmetric."""
    K = (points - 1) // 2
    return alpha_max * np.arange(-K, K + 1, dtype=np.float64) / K


def native_params(model: torch.nn.Module) -> dict[str, Tensor]:
    """Every parameter of the model as loaded (trained parameterization, frozen ones included)."""
    return {n: p.detach() for n, p in model.named_parameters()}


def curves_along(ctx: Context, model: torch.nn.Module, params0: Mapping[str, Tensor],
                 direction: Callable[[int], Direction], n: int, alphas: np.ndarray,
                 batches: Sequence[Mapping[str, Tensor]], engine: str, chunk_size: int, desc: str) -> Tensor:
    """curves[i, j] = L(theta0 + alphas[j] * direction(i)), fp64 [n, G].

    Directions are built one at a time (D full-size directions of a 350M model would not fit at once);
    the centre point is the same model for every direction and is evaluated once, with mean_nll.
    """
    a = torch.as_tensor(alphas, dtype=torch.float64)
    zero = a == 0
    out = torch.empty(n, a.numel(), dtype=torch.float64)
    with torch.no_grad(), eval_mode(model):
        out[:, zero] = float(mean_nll(model, batches, params0))
    moving = a[~zero]
    start = time.perf_counter()
    for i in range(n):
        d = direction(i)
        out[i, ~zero] = losses_along_directions(model, params0, [d], moving, batches, method=engine,
                                                chunk_size=chunk_size)[0]
        del d
        ctx.progress(desc, i + 1, n, start)
    return out


def curve_scalars(curves: Tensor, alphas: np.ndarray, suffix: str = "") -> dict[str, float]:
    """ES, DV (docs/study.md L1/L2 formulas, maths/landscape.py) of curves [D, G] with `suffix` on the names."""
    return {f"es{suffix}": finite_or_nan(expected_sharpness(curves, alphas)),
            f"dv{suffix}": finite_or_nan(direction_variance(curves))}


def _by_step(results: list[Result]) -> dict[int, list[Result]]:
    out: dict[int, list[Result]] = defaultdict(list)
    for r in results:
        out[int(r.subject.get("step", 0))].append(r)
    return dict(sorted(out.items()))


def landscape_grid(results: list[Result], name: str, curves: Callable[[Result], np.ndarray], band: bool,
                   title: str, y_label: str = "val loss") -> Chart | None:
    """One view per checkpoint step ("step N"), one mean curve per run coloured by method and, with `band`,
    a +-3 sigma band across directions (docs/study.md §4 figures 1-2). curves(r) -> [D, G]."""
    groups = _by_step(results)
    if not groups:
        return None
    series = []
    for step, rs in groups.items():
        for r in sorted(rs, key=run_label):
            run, method = run_label(r)
            x = r.arrays["alphas"]
            c = np.asarray(curves(r), dtype=np.float64).reshape(-1, x.size)
            mean = c.mean(axis=0)
            n = x.size
            hover = {"run": [run] * n, "seed": [r.subject.get("seed")] * n, "scale": [r.subject.get("scale")] * n,
                     "step": [step] * n, "directions": [c.shape[0]] * n}
            low = high = None
            if band and c.shape[0] > 1:
                sd = c.std(axis=0)
                low, high = (mean - 3 * sd).tolist(), (mean + 3 * sd).tolist()
            series.append(Series(x.tolist(), mean.tolist(), name=run, method=method, mode="lines", width=1.4,
                                 low=low, high=high, interval="band", hover=hover, view=f"step {step}"))
    return Chart(name=name, title=title, x_label="alpha", y_label=y_label, series=one_legend_entry(series),
                 views=[f"step {s}" for s in groups], view_label="step")


# ---- the metric ------------------------------------------------------------------------------------


@dataclass
class LandscapeRandomConfig:
    directions: int = 100
    """Number D of independent random directions (study: 100)."""
    alpha_max: float = 0.003
    """Half-width of the alpha grid (study: 0.003)."""
    points: int = 25
    """Grid points, odd, centred on alpha = 0 (study: 25, i.e. step 2.5e-4)."""
    norm: str = "none"
    """Direction normalisation: 'none' (study: raw N(0, 1)), 'filter' (Li et al. 2018: each output row of a
    matrix, each token row of an embedding, rescaled to the norm of the same row of W) or 'layer'."""
    one_d: str = "auto"
    """What 1-D tensors (RMSNorm gains, SLTrain sparse values) get: 'gaussian' (the study; norm 'none'
    only), 'zero' or 'radial' (d = w); 'auto' = 'gaussian' for norm 'none', else 'zero' (Li et al.)."""
    seed: int = 0
    """Family of directions: direction i is regenerable from (seed, i, parameter name)."""
    engine: str = "auto"
    """losses_along_directions method: auto (vmap on CUDA, loop on CPU), vmap, loop, compiled."""
    chunk_size: int = 4
    """Points of one direction per batched call with engine 'vmap'."""

    def __post_init__(self) -> None:
        check_grid("landscape_random", self.alpha_max, self.points)
        check_engine("landscape_random", self.engine, self.chunk_size)
        if self.directions < 1:
            raise LensError(f"landscape_random.directions must be >= 1, got {self.directions}")
        if self.norm not in NORMS:
            raise LensError(f"landscape_random.norm {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.one_d == "auto":
            self.one_d = "gaussian" if self.norm == "none" else "zero"
        if self.one_d not in ONE_D_MODES:
            raise LensError(f"landscape_random.one_d {self.one_d!r} is not one of auto, {', '.join(ONE_D_MODES)}")
        if self.one_d == "gaussian" and self.norm != "none":
            raise LensError(f"landscape_random.one_d='gaussian' only goes with norm='none' (got {self.norm!r}); "
                            "use 'zero' or 'radial'")


def build_direction(params: Mapping[str, Tensor], cfg: LandscapeRandomConfig, index: int) -> Direction:
    """Direction `index` of the metric's family: N(0, 1) per entry, normalised per `cfg.norm`/`cfg.one_d`."""
    return random_direction(params, cfg.seed, index, norm=cfg.norm, one_d=cfg.one_d)


@register
class LandscapeRandom(Metric):
    name = "landscape_random"
    dimension = "landscape"
    subject_kind = "checkpoint"
    headline = "es"
    Config = LandscapeRandomConfig
    definition = ("Expected sharpness ES (mean symmetric rise of the mean curve above alpha=0) and direction "
                  "variance DV (mean over alpha of the variance across directions) of L(theta + alpha d) along "
                  "100 Gaussian directions d over all parameters, alpha in [-0.003, 0.003] (docs/study.md L1-L2).")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        return self.combine(subject, [self.compute_part(subject, ctx, 0, 1)])

    def parts(self, subject: Subject) -> int:
        return self.cfg.directions  # direction i depends on (seed, i) only: any split gives the same curves

    def compute_part(self, subject: Subject, ctx: Context, part: int, parts: int) -> Result:
        """The curves of one contiguous slice of the directions."""
        cfg = self.cfg
        (ckpt,) = subject.checkpoints
        model = ctx.load(ckpt).model
        params0 = native_params(model)
        mine = part_range(cfg.directions, part, parts)
        curves = curves_along(ctx, model, params0, lambda i: build_direction(params0, cfg, mine[i]), len(mine),
                              alpha_grid(cfg.alpha_max, cfg.points), ctx.batches(subject.home), cfg.engine,
                              cfg.chunk_size, f"{self.name} {ckpt.run_id}@{ckpt.step}")  # [len(mine), G]
        return Result(metric=self.name, subject=subject.describe(), arrays={"curves": curves.numpy()},
                      info={"directions": [mine.start, mine.stop],
                            "n_parameters": sum(t.numel() for t in params0.values()), "n_tensors": len(params0)})

    def combine(self, subject: Subject, pieces: list[Result]) -> Result:
        cfg = self.cfg
        alphas = alpha_grid(cfg.alpha_max, cfg.points)
        curves = torch.from_numpy(np.concatenate([p.arrays["curves"] for p in pieces]))  # [D, G]
        s = landscape_summary(curves, alphas)
        c = len(alphas) // 2
        rise = 0.5 * (curves[:, c + 1:] + curves[:, :c].flip(1)) - curves[:, c:c + 1]  # [D, K]
        per_dir_es = rise.mean(dim=1)  # ES is linear in the mean curve: ES = mean_i ES_i
        es_stderr = float(per_dir_es.std(unbiased=True)) / math.sqrt(cfg.directions) if cfg.directions > 1 else 0.0
        scalars = {
            "es": s["expected_sharpness"], "dv": s["direction_variance"], "es_stderr": es_stderr,
            "loss_centre": s["centre_loss"], "loss_min": s["min_loss"], "centre_minus_min": s["centre_minus_min"],
            "d2_at_zero": float(second_derivative_at_zero(curves.mean(dim=0), alphas)),
        }
        first = pieces[0].info
        return Result(metric=self.name, subject=subject.describe(),
                      scalars={k: finite_or_nan(v) for k, v in scalars.items()},
                      arrays={"alphas": alphas, "curves": curves.numpy()},
                      info={"seed": cfg.seed, "norm": cfg.norm, "one_d": cfg.one_d, "directions": cfg.directions,
                            "n_parameters": first["n_parameters"], "n_tensors": first["n_tensors"]})

    def charts(self, results: list[Result]) -> list[Chart]:
        grid = landscape_grid(results, "landscape_random_curves", lambda r: r.arrays["curves"], band=True,
                              title="loss along random directions (mean, +-3 sigma across directions)")
        return [c for c in (grid,) if c is not None] + [
            lines_by_method(results, "es", "landscape_random_es", "ES (random directions)"),
            lines_by_method(results, "dv", "landscape_random_dv", "DV (random directions)")]
