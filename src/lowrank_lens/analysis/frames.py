"""The analysis as a DataFrame: the metrics chosen by name with typed options, run over run folders and models
in memory by the CLI's runner (run_metric), one row per subject and metric with the provenance in attrs.
What the Python API (api.py) and the training callback (callback.py) share."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import transformers

from ..errors import LensError
from ..runfolder.loading import LoadedCheckpoint
from ..version import __version__
from .base import Metric
from .context import EvalSettings
from .live import LiveContext, evaluating, token_rows
from .metrics import get_metric, metric_names
from .runner import MetricOutcome, build_metrics, run_metric
from .subjects import RunRef
from .tables import columns


def metric_options(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{metric: {field: value}} checked: known metric names, a dict of fields each."""
    for name, fields in options.items():
        get_metric(name)  # an unknown metric: one line with the valid names
        if not isinstance(fields, Mapping):
            raise LensError(f"options of metric {name} must be a dict of its fields, e.g. {name}={{'seed': 1}}; "
                            f"got {fields!r}")
    return {name: dict(fields) for name, fields in options.items()}


def chosen_metrics(metrics: str | Sequence[str] | None, options: Mapping[str, Any],
                   kinds: Sequence[str] | None = None) -> list[Metric]:
    """The metrics by name (default: all, or all of `kinds` of subject) built with their options."""
    names = [metrics] if isinstance(metrics, str) else list(metrics or [])
    if not names and kinds is not None:
        names = [n for n in metric_names() if get_metric(n).subject_kind in kinds]
    return build_metrics([n.strip() for n in names if n.strip()] or None, options=metric_options(options))


def eval_settings(device: str, dtype: str, sequences: int, batch_size: int) -> EvalSettings:
    return EvalSettings(sequences=sequences, batch_size=batch_size, device=device, dtype=dtype)


def versions() -> dict[str, str]:
    """The package and library versions every result's provenance names."""
    return {"version": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def metric_provenance(metric: Metric) -> dict[str, Any]:
    return {"version": metric.version, "config": dataclasses.asdict(metric.cfg)}


def frame(outcomes: Sequence[MetricOutcome], settings: EvalSettings) -> pd.DataFrame:
    """One row per subject (and metric), the CLI's table columns, with the provenance in attrs."""
    rows = [row for o in outcomes for row in o.rows]
    df = pd.DataFrame(rows, columns=columns(rows))  # the CLI tables' column order
    df.attrs["lowrank_lens"] = {
        **versions(),
        "metrics": {o.metric.name: {**metric_provenance(o.metric), "computed": o.computed, "cached": o.cached}
                    for o in outcomes},
        "eval": dataclasses.asdict(settings)}
    return df


def analyze_live(runs: list[RunRef], checkpoints: dict[Path, LoadedCheckpoint], metrics: list[Metric],
                 steps: list[int] | None, reference: RunRef | None, tokens: Any, settings: EvalSettings,
                 force: bool, cache_dir: str | Path | None) -> pd.DataFrame:
    """The metrics over run folders and the models in memory of `checkpoints` (each in eval mode meanwhile)."""
    vocab = min((r.vocab_size for r in runs if r.vocab_size), default=None)
    ctx = LiveContext(settings, checkpoints, token_rows(tokens, vocab))
    with evaluating([ck.model for ck in checkpoints.values()]):
        outcomes = [run_metric(m, runs, steps, reference, ctx, force, cache_dir) for m in metrics]
    return frame(outcomes, settings)
