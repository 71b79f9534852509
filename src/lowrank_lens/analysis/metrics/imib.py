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
from pathlib import Path

import numpy as np
import torch

from ...errors import LensError
from ..base import Metric, Result, finite_or_nan
from ..context import Context
from ..maths.interpolation import interpolation_barrier
from ..maths.landscape import ENGINE_METHODS
from ..plotting import method_colour, plt, save_figure
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
    """'methodA-methodB' plus scale and seed, naming one pair of runs in tables and plots."""
    return f"{subject.get('method', '?')}-{subject.get('other_method', '?')} {subject.get('scale', '')} " \
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

    def plot(self, results: list[Result], out_dir: Path) -> list[Path]:
        if not results:
            return []
        by_pair: dict[str, dict[int, float]] = defaultdict(dict)
        colours: dict[str, tuple[str, str]] = {}
        for r in results:
            label = pair_label(r.subject)
            by_pair[label][int(r.subject["step"])] = r.scalars["imib"]
            colours[label] = (method_colour(r.subject.get("method", "?")),
                              method_colour(r.subject.get("other_method", "?")))
        pairs = sorted(by_pair)
        return [_final_bars(by_pair, colours, pairs, out_dir / "imib_final.png"),
                _vs_step(by_pair, colours, pairs, out_dir / "imib_vs_step.png"),
                _heatmap(by_pair, pairs, out_dir / "imib_heatmap.png")]


def _final_bars(by_pair: dict[str, dict[int, float]], colours: dict[str, tuple[str, str]], pairs: list[str],
                path: Path) -> Path:
    """IMIB per pair at each pair's last (final) step; bar face and edge are the two methods' colours."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(pairs) + 1.5), 3.6))
    for i, p in enumerate(pairs):
        step = max(by_pair[p])
        ax.bar(i, by_pair[p][step], color=colours[p][0], edgecolor=colours[p][1], linewidth=2.5)
    ax.set_xticks(range(len(pairs)), pairs, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("IMIB at the final step")
    ax.axhline(0, color="k", lw=0.6)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def _vs_step(by_pair: dict[str, dict[int, float]], colours: dict[str, tuple[str, str]], pairs: list[str],
             path: Path) -> Path:
    """IMIB against the training step, one line per pair (a distinct colour per pair; markers filled and
    edged with the two methods' colours)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    cmap = plt.get_cmap("tab10" if len(pairs) <= 10 else "tab20")
    for i, p in enumerate(pairs):
        steps = sorted(by_pair[p])
        ax.plot(steps, [by_pair[p][s] for s in steps], color=cmap(i % cmap.N), marker="o", ms=5,
                markerfacecolor=colours[p][0], markeredgecolor=colours[p][1], markeredgewidth=1.5, label=p)
    ax.set_xlabel("training step")
    ax.set_ylabel("IMIB")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _heatmap(by_pair: dict[str, dict[int, float]], pairs: list[str], path: Path) -> Path:
    """Pair x step matrix of IMIB (blank where a pair lacks the step)."""
    steps = sorted({s for d in by_pair.values() for s in d})
    grid = np.full((len(pairs), len(steps)), np.nan)
    for i, p in enumerate(pairs):
        for j, s in enumerate(steps):
            grid[i, j] = by_pair[p].get(s, np.nan)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(steps) + 2.5), max(2.5, 0.35 * len(pairs) + 1.2)))
    im = ax.imshow(grid, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
    ax.set_yticks(range(len(pairs)), pairs, fontsize=7)
    ax.set_xlabel("training step")
    fig.colorbar(im, ax=ax, label="IMIB")
    return save_figure(fig, path)
