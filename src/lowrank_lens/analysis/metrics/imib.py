"""Inter-Method Interpolation Barrier, IMIB (docs/study.md §2, dimension 2: I2).

At one training step, two runs of different methods (same scale and seed, hence the same tokens) are
loaded as plain LLaMA models with their effective dense weights (ReLoRA W0 + s B A, SLTrain s B A + S;
ctx.dense) and every parameter is interpolated: L(alpha) = L((1 - alpha) theta_A + alpha theta_B).
    IMIB = max_{0<alpha<1} L(alpha) - (L(0) + L(1)) / 2,
with the relative IMIB (divided by the endpoint mean), the argmax alpha and the endpoint losses, as the
study's `9_1d_interpolation_cross_method.py` stores them. A larger IMIB means the two solutions sit in more
separated basins. CoLA has no dense weights (a SiLU between its factors), so pairs with CoLA are skipped
with the reason, as the study excludes CoLA.

Grid: linspace(start, end, points); the study's launcher uses [0, 1] x 21 (its script default was
[-0.25, 1.25] x 31, also accepted). The barrier reads interior points of [0, 1] only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex

from ...errors import LensError
from ..base import Metric, Result, finite_or_nan
from ..charts import Chart, Heatmap, Series
from ..context import Context
from ..maths.interpolation import interpolation_barrier
from ..maths.landscape import ENGINE_METHODS
from ..subjects import Subject
from . import register
from .interpolation import alpha_grid, check_same_buffers, curve_between, params_of


@dataclass
class IMIBConfig:
    points: int = 21
    """Grid points of alpha = linspace(start, end, points) (study's launcher: 21)."""
    start: float = 0.0
    """First alpha (study's launcher 0.0; the script default was -0.25)."""
    end: float = 1.0
    """Last alpha (study's launcher 1.0; the script default was 1.25)."""
    engine: str = "auto"
    """Landscape engine: auto (vmap on CUDA, loop on CPU), vmap, loop, compiled (maths/landscape.py)."""
    chunk_size: int = 4
    """Points per vmap call (memory ~ chunk_size x parameters); also the progress granularity."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_METHODS:
            raise LensError(f"imib.engine {self.engine!r} is not one of {', '.join(ENGINE_METHODS)}")
        if self.chunk_size < 1:
            raise LensError(f"imib.chunk_size={self.chunk_size}: need >= 1")
        alpha_grid(self.start, self.end, self.points)  # fails early on a grid without 0, 1 or an interior point


def pair_label(subject: dict) -> str:
    """'methodA-methodB' plus scale and seed, naming one pair of runs in tables and plots (after the source's
    label, in a report over several sources: report/sources.py)."""
    source = f"{subject['source']}: " if subject.get("source") else ""
    return f"{source}{subject.get('method', '?')}-{subject.get('other_method', '?')} {subject.get('scale', '')} " \
           f"s{subject.get('seed', '')}"


@register
class IMIB(Metric):
    name = "imib"
    dimension = "interpolation"
    subject_kind = "cross"
    Config = IMIBConfig
    definition = ("Inter-method interpolation barrier: at the same step, max_{0<a<1} L((1-a) W_A + a W_B) minus "
                  "the endpoint mean, between two methods' dense weights (pairs with a method that has none "
                  "are skipped with the reason; docs/study.md I2).")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        for run in subject.runs:
            if not run.has_dense_view:
                return Result(self.name, subject.describe(),
                              skipped=f"IMIB needs dense weights and {run.method} ({run.run_id}) has no dense "
                                      f"view: {run.no_dense_reason}")
        ca, cb = subject.checkpoints
        model_a, model_b = ctx.dense(ca), ctx.dense(cb)
        if model_a is None or model_b is None:
            raise LensError(f"no dense view of {ca.path if model_a is None else cb.path} although its method "
                            f"declares one")
        what = f"{subject.runs[0].run_id} vs {subject.runs[1].run_id} at step {ca.step}"
        shapes_a, shapes_b = ({k: tuple(v.shape) for k, v in params_of(m).items()} for m in (model_a, model_b))
        if shapes_a != shapes_b:  # e.g. imported runs of two architectures: no straight line joins them
            diff = sorted(set(shapes_a) ^ set(shapes_b)) or [k for k in shapes_a if shapes_a[k] != shapes_b[k]]
            return Result(self.name, subject.describe(),
                          skipped=f"{what}: the dense models have different parameters (e.g. {diff[:2]}), as two "
                                  f"architectures or shapes do; no interpolation path exists")
        check_same_buffers(model_a, model_b, what)
        alphas = alpha_grid(self.cfg.start, self.cfg.end, self.cfg.points)
        curve = curve_between(model_a, params_of(model_a), params_of(model_b), alphas, ctx,
                              ctx.batches(subject.home), self.cfg.engine, self.cfg.chunk_size, f"imib {what}")
        b = interpolation_barrier(torch.from_numpy(curve), alphas, "midpoint")
        scalars = {"imib": b.barrier, "relative_imib": b.relative, "argmax_alpha": b.argmax_alpha,
                   "loss_a": b.loss_a, "loss_b": b.loss_b}
        return Result(self.name, subject.describe(), {k: finite_or_nan(v) for k, v in scalars.items()},
                      arrays={"alphas": alphas, "curve": curve},
                      info={"baseline": "midpoint", "view": "dense", "step": ca.step,
                            "methods": [r.method for r in subject.runs]})

    def charts(self, results: list[Result]) -> list[Chart]:
        rs = [r for r in results if "imib" in r.scalars]
        if not rs:
            return []
        by_pair: dict[str, dict[int, Result]] = defaultdict(dict)
        for r in rs:
            by_pair[pair_label(r.subject)][int(r.subject["step"])] = r
        pairs = sorted(by_pair)
        return [_final_bars(by_pair, pairs), _vs_step(by_pair, pairs), _heatmap(by_pair, pairs)]


# A pair's series shows two methods. Series.method holds the first one (the bars' colour) and Series.also the
# second, so the report's method filter hides the pair when EITHER method is filtered out; the hover names both
# ("method A", "method B"), and `group` is the pair, so each pair keeps its own legend entry (labelled by the pair)
# and a legend click hides that pair only. The lines vs step override the colour: one per pair, as before.


def _pair_series(rs: list[Result], x: list, pair: str, **kw: Any) -> Series:
    sub = rs[0].subject
    n = len(rs)
    hover = {"method A": [sub.get("method")] * n, "method B": [sub.get("other_method")] * n,
             "run A": [r.subject.get("run") for r in rs], "run B": [r.subject.get("other_run") for r in rs],
             "seed": [r.subject.get("seed") for r in rs], "scale": [r.subject.get("scale") for r in rs],
             "step": [r.subject.get("step") for r in rs], "relative IMIB": [r.scalars.get("relative_imib") for r in rs],
             "argmax alpha": [r.scalars.get("argmax_alpha") for r in rs]}
    return Series(x, [r.scalars["imib"] for r in rs], name=pair, method=str(sub.get("method", "")), hover=hover,
                  also=(str(sub.get("other_method", "")),), group=pair, **kw)


def _final_bars(by_pair: dict[str, dict[int, Result]], pairs: list[str]) -> Chart:
    """IMIB per pair at each pair's last (final) step, one bar per pair in its first method's colour."""
    series: list[Series | Heatmap] = [_pair_series([by_pair[p][max(by_pair[p])]], [p], p, mode="bar")
                                      for p in pairs]
    return Chart(name="imib_final", title="IMIB at the final step", x_label="method pair",
                 y_label="IMIB at the final step", series=series)


def _vs_step(by_pair: dict[str, dict[int, Result]], pairs: list[str]) -> Chart:
    """IMIB against the training step, one line per pair, a distinct colour per pair (tab10/tab20)."""
    cmap = colormaps["tab10" if len(pairs) <= 10 else "tab20"]
    series: list[Series | Heatmap] = []
    for i, p in enumerate(pairs):
        steps = sorted(by_pair[p])
        series.append(_pair_series([by_pair[p][s] for s in steps], steps, p, marker_size=6.0,
                                   colour=to_hex(cmap(i % cmap.N))))
    return Chart(name="imib_vs_step", title="IMIB vs training step", x_label="training step", y_label="IMIB",
                 series=series)


def _heatmap(by_pair: dict[str, dict[int, Result]], pairs: list[str]) -> Chart:
    """Pair x step matrix of IMIB (blank where a pair lacks the step)."""
    steps = sorted({s for d in by_pair.values() for s in d})
    z = [[by_pair[p][s].scalars["imib"] if s in by_pair[p] else None for s in steps] for p in pairs]
    return Chart(name="imib_heatmap", title="IMIB per pair and step", x_label="training step", y_label="method pair",
                 series=[Heatmap(z=z, x=[str(s) for s in steps], y=pairs, name="IMIB", colour_label="IMIB")])
