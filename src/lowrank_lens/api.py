"""The Python API (`import lowrank_lens as ll`): the command line's computations as functions that return
pandas DataFrames, on run folders, Hugging Face checkpoint folders and models in memory.

    df = ll.analyze("runs/micro-galore-seed0", metrics="spectra", steps=[-1])   # the CLI's spectra table
    df = ll.analyze(model, metrics=["spectra", "landscape_random"], tokens=rows,
                    landscape_random={"directions": 4})                         # an nn.Module in memory
    df = ll.compare(model_a, model_b, tokens=rows)                              # interpolation, IMIB, similarity
    run = ll.load_run("runs/micro-galore-seed0"); run.log; run.checkpoint()
    run = ll.train_run(ll.run_config("nano", "galore", "train.steps=20"), out="runs")
    df = ll.evaluate("runs/micro-galore-seed0", tasks="lens_mc")                # needs the eval extra

The same functions serve the CLI (analysis/runner.run_metric, downstream/evaluate.evaluate_runs, train.train),
so a table from Python equals the CLI's. Every DataFrame carries its provenance in `df.attrs["lowrank_lens"]`:
the package and library versions, each metric's config and version, the evaluation settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from .analysis.frames import analyze_live, chosen_metrics, eval_settings, versions
from .analysis.live import LiveModel, live_runs
from .analysis.subjects import RunRef, check_steps
from .config import RunConfig
from .downstream.evaluate import evaluate_model, evaluate_runs
from .downstream.request import DownstreamRequest
from .errors import LensError
from .presets import build_config
from .runfolder.loading import LoadedCheckpoint, expand_runs
from .runfolder.run import Run, load_run
from .train import train as train_loop

Subject = str | Path | Run | nn.Module | LoadedCheckpoint
"""What the API analyses: a run folder (or a folder of runs), a Hugging Face checkpoint folder, a `Run`, a
causal LM in memory, or a loaded checkpoint of any method (`Run.checkpoint()`)."""
PAIR_KINDS = ("cross", "reference", "consecutive")


def run_config(scale: str = "micro", method: str = "full-rank", *overrides: str) -> RunConfig:
    """The resolved run config of a preset scale and method with `section.field=value` overrides (as --set)."""
    return build_config(scale, method, list(overrides))


def train_run(cfg: RunConfig, out: str | Path = "runs", run_name: str | None = None, resume: bool = False) -> Run:
    """Train (or resume) one run under `out` and return it; the CLI's `train` does the same. (Not `train`: that
    name is the training package, lowrank_lens.train, which a function of the same name would hide.)"""
    return load_run(train_loop(cfg, out, run_name=run_name, resume=resume))


def _is_hf_folder(path: Path) -> bool:
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _model(item: Any) -> Any:
    """A model from an HF checkpoint folder (loaded with transformers), anything else as it is."""
    if isinstance(item, (str, Path)) and _is_hf_folder(Path(item)):
        return AutoModelForCausalLM.from_pretrained(str(item), attn_implementation="eager")
    return item


def _split(subjects: Subject | Sequence[Subject] | Mapping[str, Subject | Sequence[Subject]]
           ) -> tuple[list[Path], list[list[LiveModel]]]:
    """Run folders, and series of models for memory: a mapping's value may be a list of models (one run's
    checkpoints, steps 0, 1, ...); names from the mapping, else model0, model1, ..."""
    if isinstance(subjects, Mapping):
        named = list(subjects.items())
    else:
        items = [subjects] if isinstance(subjects, (str, Path, Run, nn.Module, LoadedCheckpoint)) else list(subjects)
        named = [(None, s) for s in items]
    if not named:
        raise LensError("nothing to analyse; pass a run folder, a model or a checkpoint")
    folders: list[Path] = []
    live: list[list[LiveModel]] = []
    for key, item in named:
        item = _model(item.path if isinstance(item, Run) else item)
        if isinstance(item, (str, Path)):
            if key is not None:
                raise LensError(f"{key}: a run folder keeps its own name; pass run folders in a list")
            folders += expand_runs([item])
            continue
        name = key or f"model{len(live)}"
        series = list(item) if isinstance(item, (list, tuple)) else [item]
        if not series:
            raise LensError(f"{name}: an empty list of models; give it a model or a list of its checkpoints")
        models = [_model(m) for m in series]
        if bad := [type(m).__name__ for m in models if not isinstance(m, (nn.Module, LoadedCheckpoint))]:
            raise LensError(f"{name}: cannot analyse a {bad[0]}; pass run folders, HF checkpoint folders, Runs, "
                            "torch.nn.Modules or loaded checkpoints")
        live.append([LiveModel(m, name, None if isinstance(m, LoadedCheckpoint) else step)
                     for step, m in enumerate(models)])
    return folders, live


def analyze(subjects: Subject | Sequence[Subject] | Mapping[str, Subject], metrics: str | Sequence[str] | None = None,
            *, steps: Sequence[int] | None = None, tokens: np.ndarray | torch.Tensor | str | Path | None = None,
            reference: str | Path | Run | None = None, device: str = "auto", dtype: str = "auto",
            sequences: int = 1000, batch_size: int = 32, cache_dir: str | Path | None = None, force: bool = False,
            **metric_options: Mapping[str, Any]) -> pd.DataFrame:
    """The metrics (default: all) on each subject, as the CLI's `analyze` tables in one DataFrame.

    `subjects`: run folders, HF checkpoint folders, `Run`s, models in memory or loaded checkpoints (a mapping
    names them: {"gpt2": model}). `steps`: checkpoint steps of run folders (-1 = final; default all).
    A mapping's value may be a list of models: one run's checkpoints (steps 0, 1, ...), for the metrics of
    consecutive checkpoints and trajectories. `reference`: a run folder or a name of the mapping (the
    reference of activation similarity). `tokens`: evaluation rows [N, T] (-1 = masked) for models in memory,
    and instead of a run's val_tokens.npy otherwise. `metric_options`: a dict of fields per metric, e.g.
    landscape_random={"directions": 4}. Run folders use (and fill) the content-hash cache; models in memory
    are computed each call and left as they were (parameters bit for bit, train/eval mode)."""
    folders, live = _split(subjects)
    runs = [RunRef.open(p) for p in folders]
    mem_runs, checkpoints = live_runs(live)
    by_name = {r.run_id: r for r in mem_runs}
    if isinstance(reference, str) and reference in by_name:
        ref = by_name[reference]
    else:
        ref = RunRef.open(reference.path if isinstance(reference, Run) else reference) if reference else None
    step_list = list(steps) if steps is not None else None
    check_steps(runs, step_list)
    return analyze_live(runs + mem_runs, checkpoints, chosen_metrics(metrics, metric_options), step_list, ref,
                        tokens, eval_settings(device, dtype, sequences, batch_size), force, cache_dir)


def _as_checkpoint(item: Subject) -> nn.Module | LoadedCheckpoint:
    item = _model(item.path if isinstance(item, Run) else item)
    return load_run(item).checkpoint() if isinstance(item, (str, Path)) else item


def compare(a: Subject, b: Subject, metrics: str | Sequence[str] | None = None, *,
            tokens: np.ndarray | torch.Tensor | str | Path | None = None, names: tuple[str, str] = ("a", "b"),
            device: str = "auto", dtype: str = "auto", sequences: int = 1000, batch_size: int = 32,
            **metric_options: Mapping[str, Any]) -> pd.DataFrame:
    """The metrics of two models (default: every pair metric: interpolation, update spectra, IMIB, activation
    similarity): `a` and `b` are models, loaded checkpoints, HF folders or run folders (their final
    checkpoint). Pair metrics of one run (consecutive) see a -> b as two checkpoints of one run; the cross
    and reference ones see two runs, b the reference."""
    models = [_as_checkpoint(a), _as_checkpoint(b)]
    chosen = chosen_metrics(metrics, metric_options, kinds=PAIR_KINDS)
    if bad := [m.name for m in chosen if m.subject_kind not in PAIR_KINDS]:
        raise LensError(f"compare takes metrics of two models ({', '.join(PAIR_KINDS)} subjects); {bad} are of "
                        "one model: use analyze")
    settings = eval_settings(device, dtype, sequences, batch_size)
    if names[0] == names[1]:
        raise LensError(f"compare needs two different names, got {names}")
    # One step (0) for both in the pair runs, so the cross and reference metrics pair them whatever their steps;
    # 0 -> 1 in the series, so the update is a -> b.
    pair_runs, pair_cks = live_runs([[LiveModel(models[0], names[0], 0)], [LiveModel(models[1], names[1], 0)]],
                                    method_labels=names)
    (series,), series_cks = live_runs([[LiveModel(models[0], f"{names[0]}->{names[1]}", 0),
                                        LiveModel(models[1], f"{names[0]}->{names[1]}", 1)]],
                                      method_labels=[f"{names[0]}->{names[1]}"])
    parts = []
    for m in chosen:
        runs, cks, ref = ([series], series_cks, None) if m.subject_kind == "consecutive" else \
            (pair_runs, pair_cks, pair_runs[1] if m.subject_kind == "reference" else None)
        runs = runs[:1] if m.subject_kind == "reference" else runs
        parts.append(analyze_live(runs, cks, [m], None, ref, tokens, settings, False, None))
    out = pd.concat(parts, ignore_index=True)
    metrics_info = {k: v for p in parts for k, v in p.attrs["lowrank_lens"]["metrics"].items()}
    out.attrs["lowrank_lens"] = {**parts[0].attrs["lowrank_lens"], "metrics": metrics_info}
    return out


def evaluate(subjects: Subject | Sequence[Subject], tasks: str | Sequence[str] = "lens_mc", *,
             tokenizer: Any = None, **fields: Any) -> pd.DataFrame:
    """Zero-shot accuracy through lm-evaluation-harness (the `eval` extra), as the CLI's downstream table: of
    run folders (`fields`: DownstreamRequest's step, seeds, limit, batch_size, device, ...), or of a model in
    memory with its `tokenizer` (`fields`: evaluate_model's; scored where it lies, uncached, left as it was)."""
    tasks = tasks if isinstance(tasks, str) else ",".join(tasks)
    if isinstance(subjects, (nn.Module, LoadedCheckpoint)):
        if tokenizer is None:
            raise LensError("evaluating a model in memory needs its tokenizer: evaluate(model, tokenizer=TOK)")
        df = pd.DataFrame(evaluate_model(subjects, tokenizer, tasks, **fields))
        settings: dict[str, Any] = dict(fields)
    else:
        items = [subjects] if isinstance(subjects, (str, Path, Run)) else list(subjects)
        paths = [r.path if isinstance(r, Run) else Path(r) for r in items]
        req = DownstreamRequest(paths, tasks=tasks, **fields)
        df = pd.DataFrame(evaluate_runs(req))
        settings = req.score_settings
    df.attrs["lowrank_lens"] = {**versions(), "downstream": settings}
    return df
