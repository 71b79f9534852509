"""Activation similarity of a run to the full-rank reference at the same step (docs/study.md §2, dimension 4).

Both checkpoints run in their native parameterization on the same evaluation batches with
`output_hidden_states=True`. Per hidden-state index l = 0 (embedding output) .. n_layers (last block,
after the final RMSNorm: the HF convention, so n_layers + 1 "layers"), with X the baseline (reference)
and Y the target activations read token by token ([B, T, H] -> [N, H]), maths.similarity streams:
  A1 mean L2 distance  mean_i ||x_i - y_i||        A2 relative L2  A1 / mean_i ||x_i||
  A3 mean cosine       mean_i cos(x_i, y_i)        A4 linear CKA (Kornblith et al. 2019)
plus the baseline and target mean norms.

Which positions count. Default (unmasked=False): positions whose INPUT token is real. The evaluation
rows mark padding with -1, which the context turns into pad_id inputs and -100 labels at the SAME
position (labels are unshifted, HF convention), so `labels != -100` (or `attention_mask`, when a batch
has one) selects exactly the real inputs. The hidden state at t depends on inputs <= t only, so every
counted state is a function of real tokens; a row's last real token (EOS) counts although it has no
next-token target. unmasked=True is the study's variant (docs/study.md §2 A1-A4): every position, padding
included (N = 1000 x 256), with the attention mask passed as the study does (the padding positions'
states then attend to the real tokens only). On packed rows (no padding) both agree exactly.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import LensError
from ..base import Metric, Result
from ..charts import Chart, Heatmap, Series, one_legend_entry, run_label
from ..context import Context
from ..maths.loss import IGNORE_INDEX, eval_mode
from ..maths.similarity import LayerwiseSimilarity
from ..subjects import Subject
from . import register

KEYS = ("mean_l2", "relative_l2", "cosine", "cka", "baseline_norm", "target_norm")
"""Columns of the per_layer array [L + 1, 6]."""
PLOTTED = {"cka": "linear CKA (A4)", "cosine": "mean cosine (A3)", "mean_l2": "mean L2 distance (A1)",
           "relative_l2": "relative L2 distance (A2)"}
SCALAR_NAMES = {"cka": "cka", "cosine": "cosine", "mean_l2": "l2", "relative_l2": "rel_l2"}
"""per_layer column -> scalar prefix (cka_mean, cka_last, ...)."""


@dataclass
class ActivationSimilarityConfig:
    unmasked: bool = False
    """False (default): count only positions whose input token is real (padding excluded). True: the
    study's variant, every position including padding (docs/study.md §2 A1-A4)."""
    max_tokens: int = 0
    """Count at most this many token positions (the first ones in batch order, after masking) and stop
    running batches once reached; 0 = all positions of the evaluation set."""

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise LensError(f"activation_similarity.max_tokens must be >= 0 (0 = all), got {self.max_tokens}")


def counted_positions(batch: dict[str, torch.Tensor], unmasked: bool) -> torch.Tensor:
    """bool [B, T]: the positions whose hidden states are compared (see the module docstring)."""
    ids = batch["input_ids"]
    if unmasked:
        return torch.ones_like(ids, dtype=torch.bool)
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return batch["labels"] != IGNORE_INDEX


def cap_mask(mask: torch.Tensor, budget: int) -> torch.Tensor:
    """Keep only the first `budget` True entries of mask (row-major order)."""
    flat = mask.reshape(-1)
    keep = flat & (torch.cumsum(flat.long(), 0) <= budget)
    return keep.reshape(mask.shape)


def attention_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's attention mask, or 1 where the input is real (labels are unshifted: -100 marks padding
    at the padded position itself), as the study's tokenizer gives it. Real positions never see padding
    (right padding, causal attention), so only the padding positions' states (unmasked=True) depend on it."""
    if "attention_mask" in batch:
        return batch["attention_mask"]
    return (batch["labels"] != IGNORE_INDEX).long()


def _hidden_states(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The decoder's hidden states, from the model without its LM head (transformers' `base_model`): the
    same tensors, without the [B, T, vocab] logits nobody reads (2 GB at batch 64 x 256 tokens x 32K)."""
    body = getattr(model, "base_model", model)
    out = body(input_ids=batch["input_ids"], attention_mask=attention_mask(batch), output_hidden_states=True)
    return tuple(out.hidden_states)  # n_layers + 1 tensors [B, T, H]


@register
class ActivationSimilarity(Metric):
    name = "activation_similarity"
    dimension = "activations"
    subject_kind = "reference"
    headline = "cka_mean"
    Config = ActivationSimilarityConfig
    definition = ("Per hidden state (embedding output .. final norm), mean L2 distance, relative L2, mean cosine "
                  "and linear CKA between a run's and the full-rank reference's token activations at the same "
                  "step (docs/study.md A1-A4); padding excluded unless unmasked=True.")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        target_ref, base_ref = subject.checkpoints  # [0] the run's checkpoint, [1] the reference's
        target, baseline = ctx.load(target_ref).model, ctx.load(base_ref).model
        batches = ctx.batches(subject.home)
        budget = self.cfg.max_tokens or math.inf
        layers: LayerwiseSimilarity | None = None
        counted, start = 0, time.perf_counter()
        with torch.no_grad(), eval_mode(baseline), eval_mode(target):
            for i, batch in enumerate(batches, 1):
                if counted >= budget:
                    break
                mask = counted_positions(batch, self.cfg.unmasked)  # [B, T]
                if budget != math.inf:
                    mask = cap_mask(mask, int(budget - counted))
                n = int(mask.sum())
                if n == 0:
                    continue
                xs, ys = _hidden_states(baseline, batch), _hidden_states(target, batch)
                layers = layers or LayerwiseSimilarity(len(xs))
                layers.update(xs, ys, mask)
                counted += n
                ctx.progress("activation similarity batches", i, len(batches), start)
        if layers is None:
            raise LensError(f"no token position to compare for {target_ref.path} (all padding, or max_tokens)")
        rows = layers.result()
        per_layer = np.array([[row[k] for k in KEYS] for row in rows], dtype=np.float64)  # [L + 1, 6]
        scalars: dict[str, float] = {}
        for key, short in SCALAR_NAMES.items():
            col = per_layer[:, KEYS.index(key)]
            scalars[f"{short}_mean"], scalars[f"{short}_last"] = float(col.mean()), float(col[-1])
        return Result(
            metric=self.name, subject=subject.describe(), scalars=scalars, arrays={"per_layer": per_layer},
            info={"keys": list(KEYS), "n_tokens": int(rows[0]["n_tokens"]), "n_hidden_states": len(rows),
                  "positions": "all (padding included)" if self.cfg.unmasked else "real input tokens",
                  "target": f"{target_ref.run_id}@{target_ref.step}", "baseline": f"{base_ref.run_id}@{base_ref.step}",
                  "layer_0": "embedding output", "layer_last": "last block after the final norm (HF)"})

    def charts(self, results: list[Result]) -> list[Chart]:
        """Per-layer, mean-over-layers and last-layer metrics vs step, and a runs x hidden states heatmap at
        each run's last step (docs/study.md §4 figure 6 a-d), one set per model scale."""
        charts: list[Chart] = []
        by_scale: dict[str, list[Result]] = defaultdict(list)
        for r in results:
            if "per_layer" in r.arrays:
                by_scale[str(r.subject.get("scale", "?"))].append(r)
        for scale, rs in sorted(by_scale.items()):
            charts += [_per_layer_chart(rs, key, f"{self.name}_per_layer_{key}_{scale}") for key in PLOTTED]
            charts += [_summary_chart(rs, which, f"{self.name}_{which}_{scale}") for which in ("mean", "last")]
            charts.append(_heatmap_chart(rs, f"{self.name}_heatmap_{scale}"))
        return charts


def _column(r: Result, key: str) -> np.ndarray:
    return r.arrays["per_layer"][:, KEYS.index(key)]


def hidden_state(j: int) -> str:
    return "embedding" if j == 0 else f"layer {j}"


def _lines(results: list[Result], value: Callable[[Result], float | None], view: str,
           extra: dict[str, Any] | None = None) -> list[Series]:
    """One line per run of value(r) vs step in `view`; hover run, seed, reference, tokens (and `extra`)."""
    points: dict[tuple[str, str], list[tuple[int, float, Result]]] = defaultdict(list)
    for r in results:
        v = value(r)
        if v is not None:
            points[run_label(r)].append((int(r.subject.get("step", 0)), float(v), r))
    series = []
    for (run, method), pts in sorted(points.items()):
        pts.sort(key=lambda p: p[0])
        n = len(pts)
        hover = {"run": [run] * n, "seed": [p[2].subject.get("seed") for p in pts],
                 "reference": [p[2].subject.get("other_run") for p in pts],
                 "tokens": [p[2].info.get("n_tokens") for p in pts]} | {k: [v] * n for k, v in (extra or {}).items()}
        series.append(Series([p[0] for p in pts], [p[1] for p in pts], name=run, method=method, view=view,
                             hover=hover))
    return series


def _per_layer_chart(results: list[Result], key: str, name: str) -> Chart:
    """Metric `key` vs step, one view per hidden state ("embedding", "layer i"), one line per run."""
    n = max(r.arrays["per_layer"].shape[0] for r in results)
    series = []
    for j in range(n):
        series += _lines(results, lambda r, j=j: float(_column(r, key)[j]) if j < len(_column(r, key)) else None,
                         hidden_state(j), {"hidden state": hidden_state(j)})
    return Chart(name=name, title=f"{PLOTTED[key]} to the reference, per hidden state", x_label="training step",
                 y_label=PLOTTED[key], series=one_legend_entry(series), views=[hidden_state(j) for j in range(n)],
                 view_label="hidden state",
                 caption=f"{PLOTTED[key]} between each run's and the reference's activations at the same step; "
                         f"the last hidden state ({hidden_state(n - 1)}) is after the final norm.")


def _summary_chart(results: list[Result], which: str, name: str) -> Chart:
    """The mean over hidden states (or the last one) vs step, one view per metric (A1-A4)."""
    series = []
    for key, label in PLOTTED.items():
        series += _lines(results, lambda r, k=f"{SCALAR_NAMES[key]}_{which}": r.scalars.get(k), label)
    what = "mean over hidden states" if which == "mean" else "last hidden state"
    return Chart(name=name, title=f"{what} vs the reference", x_label="training step", y_label=what,
                 series=one_legend_entry(series), views=list(PLOTTED.values()), view_label="metric")


def _heatmap_chart(results: list[Result], name: str) -> Chart:
    """Runs x hidden states at each run's last analysed step, one view per metric (A1-A4)."""
    last: dict[str, Result] = {}
    for r in results:
        run = r.subject.get("run", "?")
        if run not in last or r.subject.get("step", 0) > last[run].subject.get("step", 0):
            last[run] = r
    rs = sorted(last.values(), key=lambda r: (r.subject.get("method", ""), r.subject.get("run", "")))
    methods = [r.subject.get("method", "?") for r in rs]
    labels = [f"{m}@{r.subject.get('step')}" if methods.count(m) == 1 else f"{r.subject.get('run')}@"
              f"{r.subject.get('step')}" for m, r in zip(methods, rs, strict=True)]
    n = min(r.arrays["per_layer"].shape[0] for r in rs)
    maps: list[Series | Heatmap] = [
        Heatmap(z=np.stack([_column(r, key)[:n] for r in rs]).tolist(), x=["emb"] + [str(j) for j in range(1, n)],
                y=labels, name=label, colour_label=label, view=label) for key, label in PLOTTED.items()]
    return Chart(name=name, title="similarity to the reference at each run's last step", x_label="hidden state",
                 y_label="run", series=maps, views=list(PLOTTED.values()), view_label="metric")
