"""Downstream zero-shot evaluation of trained runs with EleutherAI's lm-evaluation-harness (docs/study.md §1.6).

Needs the optional `[eval]` extra (lm-eval with its `[hf]` extra). Public API:

    evaluate_downstream(run_dirs, tasks, step="final", seeds=(0,), ...) -> list of table rows
    run_eval_downstream(run_dirs, tasks, step, seeds, out, include_path, limit, device) -> CSV path
    load_run_tokenizer(run_dir, rebuild=False) -> the run's tokenizer (transformers fast tokenizer)
    choice_loglikelihoods(model, tokenizer, context, choices) -> per-choice log-likelihoods without lm-eval
    PRESETS: "study" (the paper's task set) and "commonsense" (the LLaMA zero-shot suite)

Task "lens_mc" is the project's own 52-question smoke test about Python (tasks/lens_mc/), not a benchmark.
"""

from .direct import choice_loglikelihoods, predict
from .evaluate import evaluate_downstream, run_eval_downstream
from .taskspec import PRESETS, TASKS_DIR, resolve_tasks
from .tokenizer import load_run_tokenizer, rebuild_run_tokenizer

__all__ = ["PRESETS", "TASKS_DIR", "choice_loglikelihoods", "evaluate_downstream", "load_run_tokenizer", "predict",
           "rebuild_run_tokenizer", "resolve_tasks", "run_eval_downstream"]
