"""Downstream zero-shot evaluation of trained runs with EleutherAI's lm-evaluation-harness (docs/study.md §1.6).

Needs the optional `[eval]` extra (lm-eval with its `[hf]` extra). Public API:

    DownstreamRequest(runs, tasks=..., seeds=..., limit=..., out=...) -> what one evaluation does (request.py)
    evaluate_runs(request) -> list of table rows
    evaluate_model(model, tokenizer, tasks="lens_mc", seeds=(0,), ..., name="model", step=0) -> the same rows for
        a Hugging Face causal LM in memory (uncached; its modes and the global random states are put back)
    run_eval_downstream(request) -> CSV path (the eval-downstream command)
    evaluate_downstream(runs, tasks, step="final", seeds=(0,), ...) -> evaluate_runs of the request built
        from these arguments
    load_run_tokenizer(run_dir, rebuild=False) -> the run's tokenizer (transformers fast tokenizer)
    choice_loglikelihoods(model, tokenizer, context, choices) -> per-choice log-likelihoods without lm-eval
    PRESETS: "study" (the paper's task set) and "commonsense" (the LLaMA zero-shot suite)

Task "lens_mc" is the project's own 52-question smoke test about Python (tasks/lens_mc/), not a benchmark.
"""

from .direct import choice_loglikelihoods, predict
from .evaluate import evaluate_downstream, evaluate_model, evaluate_runs, run_eval_downstream
from .request import DownstreamRequest
from .taskspec import PRESETS, TASKS_DIR, resolve_tasks
from .tokenizer import load_run_tokenizer, rebuild_run_tokenizer

__all__ = ["PRESETS", "TASKS_DIR", "DownstreamRequest", "choice_loglikelihoods", "evaluate_downstream",
           "evaluate_model", "evaluate_runs", "load_run_tokenizer", "predict", "rebuild_run_tokenizer", "resolve_tasks",
           "run_eval_downstream"]
