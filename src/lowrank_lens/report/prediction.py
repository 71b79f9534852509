"""Tables and the figure of the downstream-prediction study (findings/prediction.py; docs/study.md §3.3, §5
item 7), written by the study's predict stage (study/stages.py) and shown by the report's prediction section.

`write_prediction_report(result, out_dir)` writes, each file atomically (temporary sibling, then rename,
so an interrupted write never leaves half a file):

- cv_scores.csv      feature_set x split: r2, mae, n (out-of-fold; R^2 = 1 - SSE/SST about the mean target)
- improvement.csv    per split: delta_r2, delta_mae of (b) over (a) and their permutation p-values
- coefficients.csv   standardized ridge coefficients of the full-data fit of each feature set, with alpha
- importance.csv     per split, the drop in CV R^2 (and rise in MAE) when each metric is removed, ranked
- predictions.csv    per unit, feature set and split: actual and out-of-fold predicted target
- predicted_vs_actual.png  one panel per feature set (LOO predictions when computed), identity line,
                     points coloured by method
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..atomic import atomic_path, write_text_atomic  # noqa: E402
from ..errors import LensError  # noqa: E402
from ..findings.prediction import PredictionResult  # noqa: E402
from ..methods import get_method


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in row])
    write_text_atomic(path, buf.getvalue())
    return path


def _method_colours(methods: Sequence[str]) -> dict[str, str]:
    """The method's registered plot colour where it has one (same colours as every other figure),
    otherwise a distinct tab10 colour."""
    out: dict[str, str | None] = {}
    for m in dict.fromkeys(methods):
        try:
            out[m] = get_method(m).colour
        except (LensError, AttributeError):  # not a registered method, or no colour
            out[m] = None
    tab10 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    free = [c for c in tab10 if c not in out.values()] or tab10
    unknown = [m for m, c in out.items() if c is None]
    return {m: c if c is not None else free[unknown.index(m) % len(free)] for m, c in out.items()}


def plot_predicted_vs_actual(result: PredictionResult, path: Path, split: str | None = None) -> Path:
    """Scatter of out-of-fold predicted vs actual target, one panel per feature set, for `split`
    (default: "loo" when computed, else the first split)."""
    splits = [s.split for s in result.scores]
    split = split or ("loo" if "loo" in splits else splits[0])
    sets = list(result.columns)
    colours = _method_colours([u.method for u in result.units])
    y = result.target
    lo, hi = float(y.min()), float(y.max())
    for fs in sets:
        p = result.score(fs, split).predictions
        lo, hi = min(lo, float(p.min())), max(hi, float(p.max()))
    pad = 0.05 * (hi - lo or 1.0)
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.0), squeeze=False)
    for ax, fs in zip(axes[0], sets, strict=True):
        sc = result.score(fs, split)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--", zorder=0)
        for m, c in colours.items():
            idx = [i for i, u in enumerate(result.units) if u.method == m]
            ax.scatter(y[idx], sc.predictions[idx], color=c, s=28, label=m, edgecolor="k", linewidth=0.4)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.set_title(f"{fs} ({split})\nR$^2$ = {sc.r2:.3f}, MAE = {sc.mae:.3g}", fontsize=9)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted (out-of-fold)")
    axes[0][-1].legend(fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_prediction_report(result: PredictionResult, out_dir: str | Path) -> list[Path]:
    """Write the CSV tables and the predicted-vs-actual PNG into `out_dir`; returns the paths written."""
    out = Path(out_dir)
    paths = [
        _csv(out / "cv_scores.csv", ["feature_set", "split", "r2", "mae", "n"],
             [(s.feature_set, s.split, s.r2, s.mae, s.n) for s in result.scores]),
        _csv(out / "improvement.csv", ["split", "delta_r2", "delta_mae", "p_r2", "p_mae", "n_perm", "p_r2_worse"],
             [(i.split, i.delta_r2, i.delta_mae, i.p_r2, i.p_mae, i.n_perm, i.p_r2_worse)
              for i in result.improvements]),
        _csv(out / "coefficients.csv", ["feature_set", "feature", "std_coef", "alpha", "intercept"],
             [(c.feature_set, f, v, c.alpha, c.intercept) for c in result.coefficients for f, v in c.coef.items()]),
        _csv(out / "importance.csv", ["split", "rank", "metric", "r2_drop", "mae_increase"],
             [(r.split, k, r.metric, r.r2_drop, r.mae_increase)
              for k, r in _ranked(result)]),
        _csv(out / "predictions.csv",
             ["unit", "run_id", "method", "scale", "seed", "step", "feature_set", "split", "actual", "predicted",
              "alpha"],
             [(u.label, u.run_id, u.method, u.scale, u.seed, "" if u.step is None else u.step, s.feature_set,
               s.split, float(result.target[i]), float(s.predictions[i]), float(s.alphas[i]))
              for s in result.scores for i, u in enumerate(result.units)]),
    ]
    if result.scores:
        paths.append(plot_predicted_vs_actual(result, out / "predicted_vs_actual.png"))
    return paths


def _ranked(result: PredictionResult):
    """(rank within split, row) for the importance rows, which are already sorted within each split."""
    seen: dict[str, int] = {}
    for r in result.importance:
        seen[r.split] = seen.get(r.split, 0) + 1
        yield seen[r.split], r
