"""Running checkpoints through lm-evaluation-harness (docs/study.md §1.6: zero-shot, acc, several seeds).

Every method's checkpoint is a LlamaForCausalLM (CoLA, SLTrain and ReLoRA replace target Linear modules
inside it; GaLore and Fira train plain weights), so lm-eval's `HFLM(pretrained=model, tokenizer=tok)` scores
all six methods in their trained parameterization, with no conversion.

`lm_eval.evaluate` is called rather than `simple_evaluate`: the latter only adds the seeding and few-shot
set-up done here (the same four seeds lm-eval's `--seed` sets) plus an environment report (torch's
collect_env, ~6 s per call) that this project records elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..rng import kept_rng
from .taskspec import TaskSpec, hub_guard, load_task, quiet_lm_eval


def make_lm(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int | str = 16,
            max_length: int | None = None) -> Any:
    """lm-eval's HFLM around an in-memory model (already on its device, in eval mode).

    `max_length` is the context lm-eval keeps (it left-truncates longer prompts); the tokenizer is told the
    same so transformers does not warn about prompts longer than the training sequence length.
    """
    quiet_lm_eval()
    if max_length:
        tokenizer.model_max_length = max_length
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def load_tasks(tm: Any, specs: Sequence[TaskSpec]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(lm-eval task dict for `evaluate`, {spec name: table units}) for the specs, loaded once."""
    task_dict: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
    units = {}
    for spec in specs:
        loaded, units[spec.name] = load_task(tm, spec)
        for k in task_dict:
            task_dict[k].update(loaded.get(k) or {})
    return task_dict, units


def run_seed(lm: Any, task_dict: dict[str, Any], seed: int, limit: int | None = None,
             num_fewshot: int | None = None) -> dict[str, Any]:
    """One lm-eval evaluation with python/numpy/torch/few-shot seeds all = `seed` (like `lm_eval --seed`).

    num_fewshot None keeps each task's own default (0 when it has none: zero-shot, as in the paper). The
    caller's random states are restored afterwards. Returns lm-eval's output with per-sample logs.
    """
    import lm_eval

    for task in task_dict["tasks"].values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    with kept_rng(), hub_guard():
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return lm_eval.evaluate(lm=lm, task_dict=task_dict, limit=limit, bootstrap_iters=0, log_samples=True)


def _scalar_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """Numeric '<metric>,<filter>' values of an lm-eval results entry, named '<metric>' for the 'none' filter."""
    out = {}
    for k, v in entry.items():
        if "," not in k or "_stderr" in k or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        metric, filt = k.split(",", 1)
        out[metric if filt == "none" else f"{metric}_{filt}"] = float(v)
    return out


def per_example(samples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-example arrays of one leaf task, in document order: every numeric per-sample metric (acc,
    acc_norm, ...) and, for multiple-choice tasks, the number of choices (for the chance level)."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    out: dict[str, np.ndarray] = {}
    names = samples[0].get("metrics", []) if samples else []
    for m in names:
        vals = [s.get(m) for s in samples]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[m] = np.asarray(vals, dtype=np.float64)
    if samples and all(isinstance(s.get("arguments"), (list, tuple)) for s in samples):
        out["n_choices"] = np.asarray([len(s["arguments"]) for s in samples], dtype=np.int64)
    return out


def extract(raw: dict[str, Any], units: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """(units with lm-eval's metrics filled in, per-example arrays 'leaf<i>.<name>') for one spec."""
    leaves = list(dict.fromkeys(leaf for u in units for leaf in u["leaves"]))
    arrays = {}
    for i, leaf in enumerate(leaves):
        for name, arr in per_example(raw["samples"].get(leaf, [])).items():
            arrays[f"leaf{i}.{name}"] = arr
    filled = []
    for u in units:
        entry = raw["results"].get(u["name"], {})
        n = sum(int(raw.get("n-samples", {}).get(leaf, {}).get("effective", 0)) for leaf in u["leaves"])
        filled.append({**u, "leaf_index": [leaves.index(leaf) for leaf in u["leaves"]], "n": n,
                       "metrics": _scalar_metrics(entry)})
    return filled, arrays
