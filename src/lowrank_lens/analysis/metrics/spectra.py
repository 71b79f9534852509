"""Spectra of the weights W at each checkpoint (docs/study.md §2, dimension 3: S1-S3).

Per target matrix: rank, effective rank (Roy & Vetterli), stable rank, spectral gap, #SV > 0.1 and their
ratios; the checkpoint value is the unweighted mean across matrices, as in the study.

Which matrices (`view`):
- 'dense' (default): each target layer's effective W from the method's dense view (exact for full-rank,
  GaLore, Fira, SLTrain, ReLoRA). CoLA has no dense W (a SiLU sits between its factors), so its factors A
  and B are analysed instead and the result says so (`basis` = 'factors').
- 'stored': what the study's scripts saw: every stored 2-D tensor of the attention and MLP modules
  (CoLA/SLTrain factors, ReLoRA's frozen W0 and LoRA factors as separate matrices).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import LensError
from ...model.architectures import block_index, of_model
from ..base import Metric, Result
from ..charts import Chart, Series, lines_by_method, one_legend_entry, run_label
from ..context import Context
from ..maths.spectra import ZERO_RULES, mean_metrics, singular_values, spectral_metrics
from ..subjects import CheckpointRef, Subject
from . import register

SPECTRAL_KEYS = ("rank", "rank_ratio", "effective_rank", "effective_rank_score", "stable_rank",
                 "stable_rank_ratio", "spectral_gap", "singular_value_ratio", "n_sv_above", "n_sv_above_ratio")
VIEWS = ("dense", "stored")


@dataclass
class SpectraConfig:
    view: str = "dense"
    """'dense' (effective W; the factors of a method without one) or 'stored' (the study's stored tensors)."""
    max_elements: int = 4_000_000
    """Skip matrices with more elements (the study skips > 4M); 0 = analyse all."""
    tol: float = 0.0
    """Singular values at or below tol do not count. 0 = relative, max(m, n) * eps_fp32 * s_1 (numpy's
    matrix_rank rule); > 0 = that absolute value (the study's 1e-12 reads every fp32 matrix as full rank)."""
    threshold: float = 0.1
    """The '#SV above threshold' cut (study: 0.1)."""
    zero_matrix: str = "skip"
    """A zero matrix has no spectrum: 'skip' leaves it out of the mean of the ratios (a deviation from the
    study), 'zero' counts it as 0 (the study's rule)."""

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise LensError(f"spectra.view {self.view!r} is not one of {', '.join(VIEWS)}")
        if self.tol < 0 or self.zero_matrix not in ZERO_RULES:
            raise LensError(f"spectra.tol must be >= 0 (got {self.tol}) and spectra.zero_matrix one of "
                            f"{', '.join(ZERO_RULES)} (got {self.zero_matrix!r})")


def analysed_matrices(ctx: Context, ckpt: CheckpointRef, view: str, max_elements: int
                      ) -> tuple[dict[str, torch.Tensor], str]:
    """The matrices a spectral metric reads, in fp32, and the basis ('dense', 'factors' or 'stored')."""
    ck = ctx.load(ckpt, dtype=torch.float32)
    if view == "stored":
        arch = of_model(ck.model)
        mats = {n: p.detach() for n, p in ck.model.named_parameters() if p.ndim == 2 and arch.is_stored(n)}
        basis = "stored"
    else:
        dense = ck.method.dense_weights(ck.model)
        if dense is not None:
            mats, basis = dict(dense), "dense"
        else:
            factors = ck.method.factors(ck.model) or {}
            mats = {f"{layer}.{k}": t for layer, fs in factors.items() for k, t in fs.items()}
            basis = "factors"
    if max_elements:
        mats = {n: m for n, m in mats.items() if m.numel() <= max_elements}
    if not mats:
        raise LensError(f"no matrix to analyse in {ckpt.path} (view {view!r}, max_elements {max_elements})")
    return {n: m.float() for n, m in mats.items()}, basis


def layer_index(name: str) -> int:
    """Transformer block index of a parameter/module name ('model.layers.3.mlp...', 'transformer.h.3.attn...'
    -> 3), -1 if none (model/architectures.block_index: the blocks of every architecture the metrics know)."""
    return block_index(name)


def spectra_result(name: str, subject: Subject, mats: dict[str, torch.Tensor], basis: str,
                   cfg: SpectraConfig, info: dict | None = None) -> Result:
    """Per-matrix spectral metrics, their mean (scalars), and per-matrix arrays for plots."""
    svals = singular_values(mats)
    names = list(mats)
    per = [spectral_metrics(svals[n], tol=cfg.tol or None, max_dim=max(mats[n].shape), threshold=cfg.threshold,
                            zero_matrix=cfg.zero_matrix) for n in names]
    table = np.array([[row[k] for k in SPECTRAL_KEYS] for row in per], dtype=np.float64)  # [M, K]
    return Result(metric=name, subject=subject.describe(), scalars=mean_metrics(per),
                  arrays={"per_matrix": table, "layer": np.array([layer_index(n) for n in names])},
                  info={"basis": basis, "matrices": names, "keys": list(SPECTRAL_KEYS), **(info or {})})


@register
class WeightSpectra(Metric):
    name = "spectra"
    dimension = "spectra"
    subject_kind = "checkpoint"
    headline = "effective_rank"
    Config = SpectraConfig
    needs_tokens = False
    definition = ("Rank, effective rank, stable rank, spectral gap and #SV>0.1 of each target W (a method "
                  "without dense W: its factors), mean over matrices (docs/study.md S1-S3).")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        (ckpt,) = subject.checkpoints
        mats, basis = analysed_matrices(ctx, ckpt, self.cfg.view, self.cfg.max_elements)
        return spectra_result(self.name, subject, mats, basis, self.cfg)

    def charts(self, results: list[Result]) -> list[Chart]:
        return [lines_by_method(results, k, f"spectra_{k}", f"weight {k.replace('_', ' ')}")
                for k in ("effective_rank", "stable_rank", "spectral_gap", "n_sv_above_ratio")] + \
               [per_layer_chart(results, "effective_rank", "spectra_effective_rank_per_layer",
                                "weight effective rank")]


def layer_view(layer: int) -> str:
    return f"layer {layer}" if layer >= 0 else "outside the blocks"


def per_layer_chart(results: list[Result], key: str, name: str, y_label: str) -> Chart:
    """Column `key` of per_matrix averaged over each transformer block's matrices (unweighted, as the
    checkpoint value averages all of them) vs step: one view per block ("layer i"), one line per run."""
    points: dict[tuple[int, str, str], list[tuple[int, float, int, Result]]] = defaultdict(list)
    for r in results:
        if "per_matrix" not in r.arrays or "layer" not in r.arrays:
            continue
        keys = list(r.info.get("keys", SPECTRAL_KEYS))
        column = r.arrays["per_matrix"][:, keys.index(key)]
        layers = r.arrays["layer"]
        for layer in np.unique(layers):
            vals = column[(layers == layer) & np.isfinite(column)]
            if vals.size:
                points[(int(layer), *run_label(r))].append((int(r.subject.get("step", 0)), float(vals.mean()),
                                                            int(vals.size), r))
    series = []
    for (layer, run, method), pts in sorted(points.items()):
        pts.sort(key=lambda p: p[0])
        series.append(Series([p[0] for p in pts], [p[1] for p in pts], name=run, method=method,
                             view=layer_view(layer),
                             hover={"run": [run] * len(pts), "seed": [p[3].subject.get("seed") for p in pts],
                                    "scale": [p[3].subject.get("scale") for p in pts], "layer": [layer] * len(pts),
                                    "matrices": [p[2] for p in pts]}))
    layers = sorted({layer for layer, _, _ in points}, key=lambda x: (x < 0, x))
    return Chart(name=name, title=f"{y_label} per layer (mean over the layer's matrices)", x_label="training step",
                 y_label=y_label, series=one_legend_entry(series), views=[layer_view(x) for x in layers],
                 view_label="layer")
