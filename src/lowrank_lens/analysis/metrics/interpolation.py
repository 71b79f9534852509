"""1-D linear interpolation between consecutive checkpoints of one run (docs/study.md §2, dimension 2: I1).

For each pair (theta_t, theta_{t+1}) of successive saved checkpoints, and for (first, last) = init->final
(the subject label says which): L(alpha) = L((1 - alpha) theta_t + alpha theta_{t+1}) on
alpha = linspace(0, 1, 21), in the method's own parameterization: every parameter tensor is interpolated
(CoLA/SLTrain factors, ReLoRA's W0 and adapters; the study's `7_1d_interpolation.py`). Buffers are not
interpolated, so they must agree at both ends (SLTrain's sparse support is fixed within a run); a
mismatch is an error, not a silent choice of one end.

The study stores only the curves; the scalar is INFERRED (docs/study.md I1): the barrier of the same form as
IMIB, max_{0<a<1} L(a) - (L(0) + L(1)) / 2, and always also the Frankle et al. (2020) form
max_{0<a<1} L(a) - ((1 - a) L(0) + a L(1)). A barrier near 0 (or negative) means a monotone, linearly
connected path between the checkpoints. Caveat: where the loss falls a lot between the two checkpoints
(early training), the midpoint form is dominated by the endpoint gap: a straight monotone descent gives
max_{0<a<1} L(a) ~ L(first interior point), so `barrier` ~ (L(0) - L(1)) / 2 > 0 while `barrier_linear`
stays ~ 0. Read `barrier_linear` for consecutive pairs; the midpoint form is kept for parity with IMIB.

The helpers here (`alpha_grid`, `check_same_buffers`, `curve_between`) are shared with `imib`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex
from torch import Tensor

from ...errors import LensError
from ..base import Metric, Result, finite_or_nan
from ..charts import Chart, Series, lines_by_method, one_legend_entry, run_label
from ..context import Context
from ..maths.interpolation import BASELINES, interpolation_barrier, interpolation_curve
from ..maths.landscape import ENGINE_METHODS
from ..maths.loss import eval_mode, mean_nll
from ..subjects import Subject
from . import register


@dataclass
class InterpolationConfig:
    points: int = 21
    """Grid points of alpha = linspace(0, 1, points), both ends included (study: 21)."""
    baseline: str = "midpoint"
    """Form of `barrier`: 'midpoint' (max L(a) - (L(0)+L(1))/2, as IMIB) or 'linear' (Frankle et al.);
    `barrier_linear` is reported either way."""
    engine: str = "auto"
    """Landscape engine: auto (vmap on CUDA, loop on CPU), vmap, loop, compiled (maths/landscape.py)."""
    chunk_size: int = 4
    """Points per vmap call (memory ~ chunk_size x parameters); also the progress granularity."""

    def __post_init__(self) -> None:
        if self.points < 3:
            raise LensError(f"interpolation.points={self.points}: need >= 3 (both ends and an interior point)")
        if self.baseline not in BASELINES:
            raise LensError(f"interpolation.baseline {self.baseline!r} is not one of {', '.join(BASELINES)}")
        if self.engine not in ENGINE_METHODS:
            raise LensError(f"interpolation.engine {self.engine!r} is not one of {', '.join(ENGINE_METHODS)}")
        if self.chunk_size < 1:
            raise LensError(f"interpolation.chunk_size={self.chunk_size}: need >= 1")


def alpha_grid(start: float, end: float, points: int) -> np.ndarray:
    """linspace(start, end, points) in fp64 with points within 1e-9 * span of 0 or 1 snapped to exactly
    0 and 1 (so e.g. the study's [-0.25, 1.25] x 31 grid hits both endpoints). Raises if it misses them."""
    if points < 3 or not end > start:
        raise LensError(f"alpha grid [{start}, {end}] x {points}: need start < end and >= 3 points")
    a = np.linspace(start, end, points, dtype=np.float64)
    tol = 1e-9 * (end - start)
    for v in (0.0, 1.0):
        a[np.abs(a - v) <= tol] = v
    if not ((a == 0.0).any() and (a == 1.0).any() and ((a > 0) & (a < 1)).any()):
        raise LensError(f"alpha grid linspace({start}, {end}, {points}) must contain 0 and 1 and a point "
                        f"between them (the barrier compares the endpoints with interior points)")
    return a


def check_same_buffers(model_a: torch.nn.Module, model_b: torch.nn.Module, what: str) -> None:
    """Interpolation moves parameters only: every buffer (e.g. SLTrain's sparse support) must be equal."""
    ba, bb = dict(model_a.named_buffers()), dict(model_b.named_buffers())
    if set(ba) != set(bb):
        raise LensError(f"{what}: the two models have different buffers, e.g. {sorted(set(ba) ^ set(bb))[:3]}")
    for n, t in ba.items():
        if t.shape != bb[n].shape or not torch.equal(t, bb[n].to(t.device)):
            raise LensError(f"{what}: buffer {n!r} differs between the two endpoints; interpolation moves "
                            f"parameters only, so fixed structure (e.g. a sparse support) must be the same")


def curve_between(model: torch.nn.Module, params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor],
                  alphas: np.ndarray, ctx: Context, batches: Sequence[Mapping[str, Tensor]], engine: str,
                  chunk_size: int, desc: str) -> np.ndarray:
    """L((1-a) theta_a + a theta_b) for every a (fp64 [G]), evaluated on `model` (architecture of both).

    Points run through maths.interpolation_curve in chunks of `chunk_size` (progress after each). The
    point a = 1 is evaluated at params_b itself rather than theta_a + (theta_b - theta_a), so the end loss
    is exactly the later checkpoint's own loss even in bf16 (where the detour rounds twice).
    """
    out = np.empty(len(alphas), dtype=np.float64)
    is_one = alphas == 1.0
    moving = np.flatnonzero(~is_one)
    chunks = [moving[i:i + chunk_size] for i in range(0, len(moving), chunk_size)]
    total, start = len(chunks) + int(is_one.any()), time.perf_counter()
    for i, idx in enumerate(chunks, 1):
        out[idx] = interpolation_curve(model, params_a, params_b, alphas[idx].tolist(), batches,
                                       method=engine, chunk_size=chunk_size).numpy()
        ctx.progress(desc, i, total, start)
    if is_one.any():
        with torch.no_grad(), eval_mode(model):
            out[is_one] = float(mean_nll(model, batches, dict(params_b)))
        ctx.progress(desc, total, total, start)
    return out


def params_of(model: torch.nn.Module) -> dict[str, Tensor]:
    """Every parameter tensor of a model (detached; tied weights once, as named_parameters gives them)."""
    return {n: p.detach() for n, p in model.named_parameters()}


@register
class Interpolation(Metric):
    name = "interpolation"
    dimension = "interpolation"
    subject_kind = "consecutive"
    headline = "barrier_linear"
    Config = InterpolationConfig
    definition = ("Loss along the straight line (1-a) theta_t + a theta_t+1 between consecutive checkpoints "
                  "(and init->final) in the method's own parameterization; barrier = max_{0<a<1} L(a) minus "
                  "the endpoint mean, plus the Frankle et al. linear-baseline form (docs/study.md I1).")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        ca, cb = subject.checkpoints
        model_a, model_b = ctx.load(ca).model, ctx.load(cb).model
        what = f"{subject.home.run_id} steps {ca.step}->{cb.step}"
        check_same_buffers(model_a, model_b, what)
        alphas = alpha_grid(0.0, 1.0, self.cfg.points)
        curve = curve_between(model_a, params_of(model_a), params_of(model_b), alphas, ctx,
                              ctx.batches(subject.home), self.cfg.engine, self.cfg.chunk_size, f"interp {what}")
        main = interpolation_barrier(torch.from_numpy(curve), alphas, self.cfg.baseline)
        linear = interpolation_barrier(torch.from_numpy(curve), alphas, "linear")
        scalars = {"barrier": main.barrier, "barrier_linear": linear.barrier, "relative_barrier": main.relative,
                   "argmax_alpha": main.argmax_alpha, "loss_start": main.loss_a, "loss_end": main.loss_b,
                   "loss_max": float(curve.max())}
        return Result(self.name, subject.describe(), {k: finite_or_nan(v) for k, v in scalars.items()},
                      arrays={"alphas": alphas, "curve": curve},
                      info={"baseline": self.cfg.baseline, "parameters": len(params_of(model_a)),
                            "steps": [ca.step, cb.step]})

    def charts(self, results: list[Result]) -> list[Chart]:
        charts = [_curves_per_run(results, run) for run in sorted({r.subject["run"] for r in results})]
        consecutive = [r for r in results if r.subject.get("kind") == "consecutive"]
        if consecutive:
            charts.append(_sequential_path(consecutive))
            charts.append(lines_by_method(consecutive, "barrier", "interpolation_barrier",
                                          "barrier (consecutive checkpoints)"))
        return charts


def _pair(r: Result) -> str:
    return f"{r.subject['step_from']}->{r.subject['step']}"


def _hover(r: Result, n: int) -> dict[str, list]:
    return {"run": [r.subject.get("run")] * n, "seed": [r.subject.get("seed")] * n,
            "scale": [r.subject.get("scale")] * n, "pair": [_pair(r)] * n,
            "barrier": [r.scalars.get("barrier")] * n, "barrier_linear": [r.scalars.get("barrier_linear")] * n}


def step_colours(n: int) -> list[str]:
    """n hex colours along viridis, early pairs dark, late ones yellow."""
    cmap = colormaps["viridis"]
    return [to_hex(cmap(i / max(1, n - 1))) for i in range(n)]


def _curves_per_run(results: list[Result], run: str) -> Chart:
    """Loss vs alpha for one run: one curve per consecutive pair (viridis by step), init->final dashed black.
    Every curve is the run's method's (the method filter hides them all), but each pair has its own legend
    entry and legend group, so a legend click hides one pair."""
    mine = sorted((r for r in results if r.subject["run"] == run), key=lambda r: (r.subject["step"],
                                                                                  r.subject["step_from"]))
    pairs = [r for r in mine if r.subject.get("kind") == "consecutive"]
    method = str(mine[0].subject.get("method", "?")) if mine else ""
    series = []
    for r, colour in zip(pairs, step_colours(len(pairs)), strict=True):
        n = len(r.arrays["alphas"])
        series.append(Series(r.arrays["alphas"].tolist(), r.arrays["curve"].tolist(), name=_pair(r), method=method,
                             colour=colour, marker_size=3.0, hover=_hover(r, n), group=_pair(r)))
    for r in mine:
        if r.subject.get("kind") == "init-final":
            name = f"init-final {_pair(r)}"
            series.append(Series(r.arrays["alphas"].tolist(), r.arrays["curve"].tolist(), name=name, method=method,
                                 colour="#000000", mode="lines", dash="dash",
                                 hover=_hover(r, len(r.arrays["alphas"])), group=name))
    return Chart(name=f"interpolation_curves_{run}", title=f"{run} ({method})" if mine else run, x_label="alpha",
                 y_label="loss", series=series)


def _sequential_path(results: list[Result]) -> Chart:
    """The study's sequential path: each pair's curve placed on [step_t, step_t+1] of the training-step
    axis, so one run's pairs join into one line (coloured by method)."""
    by_run: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        by_run[run_label(r)].append(r)
    series = []
    for (run, method), rs in sorted(by_run.items()):
        xs, ys, hover = [], [], defaultdict(list)
        for r in sorted(rs, key=lambda r: r.subject["step_from"]):
            s0, s1 = r.subject["step_from"], r.subject["step"]
            alphas = r.arrays["alphas"]
            xs += (s0 + alphas * (s1 - s0)).tolist()
            ys += r.arrays["curve"].tolist()
            for k, v in _hover(r, len(alphas)).items():
                hover[k] += v
            hover["alpha"] += alphas.tolist()
        series.append(Series(xs, ys, name=run, method=method, mode="lines", width=1.2, hover=dict(hover)))
    return Chart(name="interpolation_sequential_path", title="loss along the sequential interpolation path",
                 x_label="training step", y_label="loss along the interpolation path",
                 series=one_legend_entry(series))
