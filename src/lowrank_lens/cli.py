"""Command line: `lowrank-lens <command>` (also `python -m lowrank_lens`, which is what torchrun runs).

Options map onto the typed config (config.py); any field can be set with `--set section.field=value`.
Errors in the user's input print one line (`error: ...`) and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import LensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train LLaMA-style models with full-rank and low-rank methods; study the solutions.")

Preset = Annotated[str, typer.Option("--preset", "-p", help="Scale preset: nano, micro, 60m, 130m, 350m, 1b.")]
MethodOpt = Annotated[str, typer.Option("--method", "-m", help="Training method (see `lowrank-lens list`).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any config field: section.field=value "
                                                              "(sections: model, data, optim, train, method).")]


def _resolve(preset: str, method: str, data: str | None, tokenizer: str | None, steps: int | None,
             seed: int | None, precision: str | None, device: str | None, sets: list[str] | None):
    from .presets import build_config

    overrides = []
    for key, value in (("data.source", data), ("data.tokenizer", tokenizer), ("train.steps", steps),
                       ("train.seed", seed), ("train.precision", precision), ("train.device", device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return build_config(preset, method, overrides + list(sets or []))


@app.command()
def train(
    preset: Preset = "micro",
    method: MethodOpt = "full-rank",
    out: Annotated[Path, typer.Option(help="Parent folder of run directories.")] = Path("runs"),
    data: Annotated[str | None, typer.Option(help="embedded, c4, or a path to text/jsonl/parquet files.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="'bpe' (trained on the corpus) or a HF name/path.")] = None,
    steps: Annotated[int | None, typer.Option(help="Number of optimizer updates.")] = None,
    seed: Annotated[int | None, typer.Option(help="Model-initialisation seed.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16-mixed or bf16-pure.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    run_name: Annotated[str | None, typer.Option(help="Run directory name (default: preset-method-seedN).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run if it has checkpoints.")] = False,
    set_: SetOpt = None,
) -> None:
    """Train one model. Works alone or under `torchrun --nproc_per_node N -m lowrank_lens train ...`."""
    from .train import train as run_train

    cfg = _resolve(preset, method, data, tokenizer, steps, seed, precision, device, set_)
    run_train(cfg, out, run_name=run_name, resume=resume)


@app.command()
def resume(run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<run-id>).")]) -> None:
    """Continue a stopped run from its newest complete checkpoint, with its saved config."""
    from .train import load_run_config
    from .train import train as run_train

    cfg = load_run_config(run_dir)
    run_train(cfg, run_dir.parent, run_name=run_dir.name, resume=True)


@app.command()
def analyze(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding runs.")],
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metric names (default: all).")] = None,
    steps: Annotated[str, typer.Option(help="'all', 'final' or steps like 0,500,final.")] = "all",
    reference: Annotated[Path | None, typer.Option(help="Reference run for activation similarity (default: "
                                                        "the full-rank run of the same scale and seed).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Metric option: metric.field=value.")] = None,
    sequences: Annotated[int, typer.Option(help="Validation sequences to evaluate on (study: 1000).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 32,
    token_file: Annotated[str, typer.Option(help=".npy token rows [N, T] (-1 = masked) instead of each "
                                                 "run's val_tokens.npy.")] = "",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on GPU), fp32, bf16, fp64.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Where tables and figures go (default: <runs>/analysis).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when cached.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write figures.")] = True,
    jobs: Annotated[int, typer.Option(help="Worker processes computing at once (CPU: one per core).")] = 1,
) -> None:
    """Compute the solution metrics of runs (cached by content; a re-run only computes what changed)."""
    from .analysis.context import EvalSettings
    from .analysis.runner import analyze as run_analyze

    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    settings = EvalSettings(sequences=sequences, batch_size=batch_size, token_file=token_file, device=device,
                            dtype=dtype)
    from .analysis.subjects import parse_steps
    from .train.loading import expand_runs

    chosen_steps = parse_steps(steps)
    run_analyze(expand_runs(runs), names, chosen_steps, reference, set_ or [], settings, out, force, plots,
                jobs)


@app.command("eval-downstream")
def eval_downstream(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding runs.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated lm-eval task names, presets (study, commonsense), "
                                            "lens_mc, or local .jsonl/.yaml task files.")] = "lens_mc",
    step: Annotated[str, typer.Option(help="Checkpoint step, or 'final'.")] = "final",
    seeds: Annotated[str, typer.Option(help="Comma-separated evaluation seeds.")] = "0",
    include_path: Annotated[str | None, typer.Option(help="Folder of local lm-eval task YAMLs.")] = None,
    limit: Annotated[int | None, typer.Option(help="First N examples per task (smoke tests).")] = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 16,
    num_fewshot: Annotated[int | None, typer.Option(help="Few-shot examples (default: zero-shot).")] = None,
    bootstrap_iters: Annotated[int, typer.Option(help="Bootstrap draws of the standard error.")] = 1000,
    rebuild_tokenizer: Annotated[bool, typer.Option("--rebuild-tokenizer", help="Retrain a run's BPE "
                                                    "tokenizer from its corpus if its file is gone.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder of downstream.csv (default: <runs>/downstream).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when cached.")] = False,
) -> None:
    """Zero-shot accuracy of checkpoints through lm-evaluation-harness (needs the `eval` extra installed)."""
    try:
        from .downstream.evaluate import run_eval_downstream
    except ImportError as e:
        raise LensError(f"downstream evaluation needs lm-eval ({e.name} is missing); install it with "
                        f"pip install 'lowrank-lens[eval]'") from None
    from .train.loading import expand_runs

    dirs = expand_runs(runs)
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    folder = out or dirs[0].parent / "downstream"
    run_eval_downstream(dirs, task_list, step, seed_list, folder, include_path, limit, device,
                        batch_size=batch_size, num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters,
                        rebuild_tokenizer=rebuild_tokenizer, force=force)


@app.command()
def predict(
    runs: Annotated[list[Path], typer.Argument(help="A study folder, run directories, or folders of runs.")],
    features: Annotated[str | None, typer.Option(help="Comma-separated metric columns such as "
                                                      "landscape_random.es (default: each metric's headline).")] = None,
    analysis: Annotated[Path | None, typer.Option(help="Folder of the analysis tables (default: "
                                                       "<study>/analysis or <runs>/analysis).")] = None,
    downstream: Annotated[Path | None, typer.Option(help="downstream.csv (default: <study or runs>/downstream/"
                                                         "downstream.csv).")] = None,
    permutations: Annotated[int, typer.Option(help="Permutations of the improvement test.")] = 200,
    out: Annotated[Path | None, typer.Option(help="Prediction tables folder (default: <...>/prediction).")] = None,
) -> None:
    """Predict downstream accuracy from perplexity alone vs perplexity plus the solution metrics."""
    from .study.stages import run_prediction
    from .train.loading import expand_runs

    base = runs[0] if (runs[0] / "study.json").is_file() else None
    dirs = expand_runs([base / "runs"] if base else runs)
    root = base or dirs[0].parent
    feats = [f.strip() for f in features.split(",") if f.strip()] if features else None
    files = run_prediction(dirs, analysis or root / "analysis", downstream or root / "downstream" / "downstream.csv",
                           out or root / "prediction", feats, permutations)
    typer.echo("\n".join(str(f) for f in files))


@app.command()
def study(
    study_file: Annotated[str, typer.Argument(help="A study file (TOML/JSON), a preset (demo, paper), or a "
                                                   "study folder to re-run in place.")],
    out: Annotated[Path | None, typer.Option(help="Study folder (default: studies/<name>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs and training commands only.")] = False,
    stages: Annotated[str, typer.Option(help="Comma-separated stages to run: train, analyze, downstream, "
                                             "predict, report.")] = "train,analyze,downstream,predict,report",
) -> None:
    """Train the grid methods x scales x seeds, analyse, evaluate downstream, predict and report (resumable)."""
    from .study.runner import STAGES, describe_plan, run_study
    from .study.spec import existing_study_folder, load_spec

    spec = load_spec(study_file)
    folder = out or existing_study_folder(study_file) or Path("studies") / spec.name
    if dry_run:
        typer.echo(describe_plan(spec, folder))
        return
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    bad = [s for s in chosen if s not in STAGES]
    if bad:
        raise LensError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    result = run_study(spec, folder, chosen)
    typer.echo(f"study {spec.name}: {result}")


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Study folder.")] = Path("studies/demo")) -> None:
    """The whole study offline on a CPU: 6 methods x 3 seeds on the embedded corpus, then the report."""
    from .study.presets import demo as demo_spec
    from .study.runner import run_study

    result = run_study(demo_spec(), out)
    typer.echo(f"report: {result}")


@app.command("config")
def show_config(
    preset: Preset = "micro",
    method: MethodOpt = "full-rank",
    set_: SetOpt = None,
) -> None:
    """Print the resolved config of a preset x method (with overrides) as JSON."""
    cfg = _resolve(preset, method, None, None, None, None, None, None, set_)
    typer.echo(json.dumps(cfg.to_dict(), indent=2))


@app.command("list")
def list_things() -> None:
    """List presets, methods and metrics."""
    from .methods import get_method, method_names
    from .model import build_model, count_parameters
    from .presets import MODEL_SHAPES

    typer.echo("presets:")
    for name, shape in MODEL_SHAPES.items():
        n = count_parameters(build_model(shape, device="meta"))
        typer.echo(f"  {name:6s} hidden {shape.hidden_size:5d}  layers {shape.num_layers:3d}  "
                   f"vocab {shape.vocab_size:6d}  {n / 1e6:8.2f}M params")
    typer.echo("methods:")
    for name in method_names():
        doc = (get_method(name).__doc__ or "").strip().splitlines()
        typer.echo(f"  {name:10s} {doc[0] if doc else ''}")
    from .analysis.metrics import get_metric, metric_names

    typer.echo("metrics:")
    for name in metric_names():
        m = get_metric(name)
        typer.echo(f"  {name:22s} [{m.dimension}, {m.subject_kind}] {m.definition}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "datasets", "huggingface_hub", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except LensError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
