"""Command line: `lowrank-lens <command>` (also `python -m lowrank_lens`, which is what torchrun runs).

Options map onto the typed config (config.py); any field can be set with `--set section.field=value`.
Errors in the user's input print one line (`error: ...`) and exit with status 2.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from .analysis.context import TOKEN_FILE_FIX, EvalSettings
from .analysis.metrics import get_metric, metric_names
from .analysis.request import AnalysisRequest
from .analysis.runner import run_analysis
from .analysis.subjects import parse_steps
from .cli_options import (
    MethodOpt,
    Preset,
    SetOpt,
    at_least,
    check_saved_run,
    int_list,
    resolve_config,
    writable_folder,
)
from .data.cache import load_token_rows
from .downstream.evaluate import run_eval_downstream
from .downstream.request import DownstreamRequest, parse_step
from .errors import LensError, Terminated
from .imports import ImportOptions, import_series
from .methods import get_method, method_names
from .model import build_model, count_parameters
from .presets import MODEL_SHAPES
from .runfolder.files import load_run_config
from .runfolder.folder import check_run_name
from .runfolder.loading import expand_runs, parse_device
from .study.presets import demo as demo_spec
from .study.reporting import report_sources
from .study.runner import STAGES, describe_plan, run_study
from .study.spec_files import existing_study_folder, load_spec
from .study.stages import run_prediction
from .study.status import study_status
from .study.submit import SubmitOptions, submit_study
from .train import train as run_train
from .train.run import default_run_name

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train LLaMA-style models with full-rank and low-rank methods; study the solutions.")


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

    if run_name is not None:
        check_run_name(run_name)
    cfg = resolve_config(preset, method, data, tokenizer, steps, seed, precision, device, set_)
    parse_device(cfg.train.device, "--device" if device is not None else "train.device")
    writable_folder(out, "--out")
    if resume:
        check_saved_run(out / (run_name or default_run_name(cfg)))
    run_train(cfg, out, run_name=run_name, resume=resume)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<run-id>).")],
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: the saved one; "
                                                    "changing it does not change the maths).")] = None,
) -> None:
    """Continue a stopped run from its newest complete checkpoint, with its saved config."""

    cfg = load_run_config(run_dir)
    if device is not None:  # train.device is one of the keys a resumption may change (train/run.py)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    parse_device(cfg.train.device, "--device" if device is not None else f"train.device of {run_dir}/config.json")
    check_saved_run(run_dir)
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
    dtype: Annotated[str, typer.Option(help="auto (= fp32 on every device), fp32, bf16 (faster on GPU, "
                                               "but an audit saw it move ES_rand by ~28%), fp64.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Where tables and figures go (default: <runs>/analysis, or "
                                                  "DIR/analysis with --cache-dir DIR).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache results under DIR/<run-id>/ (same content keys) "
                                                        "instead of <run>/analysis/: the run folders are only "
                                                        "read, so they may be read-only.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when cached.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write figures.")] = True,
    jobs: Annotated[int, typer.Option(help="Worker processes computing at once (CPU: one per core).")] = 1,
) -> None:
    """Compute the solution metrics of runs (cached by content; a re-run only computes what changed)."""

    at_least(1, sequences=sequences, batch_size=batch_size, jobs=jobs)
    parse_device(device)
    chosen_steps = parse_steps(steps)
    if token_file:
        try:
            load_token_rows(token_file, fix=TOKEN_FILE_FIX)
        except LensError as e:
            raise LensError(f"--token-file: {e}") from None
    settings = EvalSettings(sequences=sequences, batch_size=batch_size, token_file=token_file, device=device,
                            dtype=dtype)
    dirs = expand_runs(runs)
    if cache_dir is not None:
        writable_folder(cache_dir, "--cache-dir")
    req = AnalysisRequest(dirs, metrics=metrics, steps=chosen_steps, reference=reference, overrides=set_ or (),
                          settings=settings, out=out, force=force, plots=plots, jobs=jobs, cache_dir=cache_dir)
    writable_folder(req.out, "--out")  # the default folder too
    run_analysis(req)


@app.command("eval-downstream")
def eval_downstream(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding runs.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated lm-eval task names, presets (study, commonsense), "
                                            "lens_mc, or local .jsonl/.yaml task files. A task YAML is code: "
                                            "lm-eval's !function tag imports and runs Python from the YAML's "
                                            "folder, so use only task files you trust.")] = "lens_mc",
    step: Annotated[str, typer.Option(help="Checkpoint step, or 'final'.")] = "final",
    seeds: Annotated[str, typer.Option(help="Comma-separated evaluation seeds.")] = "0",
    include_path: Annotated[str | None, typer.Option(help="Folder of local lm-eval task YAMLs. They are code: "
                                                          "a !function tag imports and runs a Python file of "
                                                          "that folder; include only folders you trust.")] = None,
    limit: Annotated[int | None, typer.Option(help="First N examples per task (smoke tests).")] = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 16,
    num_fewshot: Annotated[int | None, typer.Option(help="Few-shot examples (default: zero-shot).")] = None,
    bootstrap_iters: Annotated[int, typer.Option(help="Bootstrap draws of the standard error.")] = 1000,
    rebuild_tokenizer: Annotated[bool, typer.Option("--rebuild-tokenizer", help="Retrain a run's BPE "
                                                    "tokenizer from its corpus if its file is gone.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder of downstream.csv, or the .csv path itself (default: "
                                                  "<runs>/downstream, or DIR/downstream with --cache-dir DIR)."
                                             )] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache results under DIR/<run-id>/ instead of "
                                                        "<run>/analysis/: the run folders are only read.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when cached.")] = False,
) -> None:
    """Zero-shot accuracy of checkpoints through lm-evaluation-harness (needs the `eval` extra installed)."""

    seed_list = int_list(seeds, "--seeds")
    chosen_step = parse_step(step)
    at_least(1, limit=limit, batch_size=batch_size)
    at_least(0, num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters)
    parse_device(device)
    dirs = expand_runs(runs)
    if cache_dir is not None:
        writable_folder(cache_dir, "--cache-dir")
    req = DownstreamRequest(dirs, tasks=tasks, step=chosen_step, seeds=seed_list, batch_size=batch_size, limit=limit,
                            include_path=include_path, device=device, bootstrap_iters=bootstrap_iters,
                            num_fewshot=num_fewshot, rebuild_tokenizer=rebuild_tokenizer, force=force,
                            cache_dir=cache_dir, out=out)
    folder = req.out
    assert folder is not None
    if folder.suffix == ".csv" and not folder.is_dir():  # the table's own path
        writable_folder(folder.parent, "--out", target=folder)
    else:
        writable_folder(folder, "--out")
    run_eval_downstream(req)


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

    base = runs[0] if (runs[0] / "study.json").is_file() else None
    dirs = expand_runs([base / "runs"] if base else runs)
    root = base or dirs[0].parent
    feats = [f.strip() for f in features.split(",") if f.strip()] if features else None
    folder = writable_folder(out or root / "prediction", "--out")
    files = run_prediction(dirs, analysis or root / "analysis", downstream or root / "downstream" / "downstream.csv",
                           folder, feats, permutations)
    typer.echo("\n".join(str(f) for f in files))


@app.command("import")
def import_(
    source: Annotated[str, typer.Argument(help="A folder of HF checkpoints (checkpoint-N/, step_N/, model_N/), one "
                                                "model folder, or a hub repo id (with --revisions).")],
    out: Annotated[Path, typer.Option(help="The new run directory, e.g. runs/pythia-70m.")],
    method: Annotated[str, typer.Option(help="Label of the method it was trained with (tables group by it).")] = "",
    scale: Annotated[str, typer.Option(help="Scale label (runs of one scale are compared).")] = "imported",
    seed: Annotated[int, typer.Option(help="Seed label (seeds of one method and scale are pooled).")] = 0,
    tokens: Annotated[str, typer.Option(help="Evaluation rows: an .npy of token rows, or a text file tokenized with "
                                              "the checkpoint's tokenizer (default: embedded-corpus sample).")] = "",
    revisions: Annotated[str, typer.Option(help="Comma-separated hub revisions (e.g. step1000,step2000).")] = "",
    targets: Annotated[str, typer.Option(help="Comma-separated fnmatch patterns of the target matrices, for an "
                                               "architecture lowrank-lens does not know.")] = "",
    layout: Annotated[str, typer.Option(help="auto, hf (dense weights), or the method whose official scripts "
                                              "saved the folder (README: the layouts import reads).")] = "auto",
    seq_len: Annotated[int, typer.Option(help="Tokens per evaluation row (text / default rows).")] = 256,
    rows: Annotated[int, typer.Option(help="Evaluation rows built from text / the default sample.")] = 256,
    baseline: Annotated[bool, typer.Option(help="Mark this series as the baseline of comparisons.")] = False,
) -> None:
    """Turn a checkpoint series trained elsewhere into a run directory every command reads."""

    split = lambda text: tuple(t.strip() for t in text.split(",") if t.strip())  # noqa: E731
    opts = ImportOptions(label=method, scale=scale, seed=seed, tokens=tokens, revisions=split(revisions),
                         targets=split(targets), layout=layout, seq_len=seq_len, rows=rows, baseline=baseline)
    typer.echo(f"imported: {import_series(source, writable_folder(out, '--out'), opts)}")


@app.command()
def study(
    study_file: Annotated[str, typer.Argument(help="A study file (TOML/JSON), a preset (demo, paper), or a "
                                                   "study folder to re-run in place.")],
    out: Annotated[Path | None, typer.Option(help="Study folder (default: studies/<name>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs and training commands only.")] = False,
    stages: Annotated[str, typer.Option(help="Comma-separated stages to run: tune (studies with tune = true), "
                                             "train, analyze, downstream, predict, findings, report (report "
                                             "recomputes the findings first).")
                      ] = "tune,train,analyze,downstream,predict,findings,report",
    status: Annotated[bool, typer.Option("--status", help="Print each run's and stage's state from the study "
                                                          "folder (done, running, to do, failed + log).")] = False,
    executor: Annotated[str, typer.Option(help="inline (this process), local (submitit processes on this "
                                               "machine) or slurm (job arrays with afterok dependencies).")
                        ] = "inline",
    partition: Annotated[str, typer.Option(help="Slurm partition.")] = "",
    account: Annotated[str, typer.Option(help="Slurm account.")] = "",
    time_min: Annotated[int, typer.Option(help="Time limit per task in minutes (training requeues and "
                                               "resumes at it).")] = 24 * 60,
    gpus_per_run: Annotated[int | None, typer.Option(help="GPUs per training run (default: the study's).")] = None,
    processes_per_run: Annotated[int | None, typer.Option(help="Processes per CPU run (gloo).")] = None,
    cpus_per_task: Annotated[int, typer.Option(help="CPUs per task.")] = 1,
    mem_gb: Annotated[int, typer.Option(help="Memory per task in GB (0: the cluster's default).")] = 0,
    analysis_tasks: Annotated[int, typer.Option(help="Tasks of the analysis and downstream arrays.")] = 8,
    sbatch: Annotated[list[str] | None, typer.Option(help="Extra sbatch option --name=value (repeatable).")
                      ] = None,
) -> None:
    """Train the grid methods x scales x seeds, analyse, evaluate downstream, predict, compute the findings and
    report (resumable); in this process, or as submitit jobs (--executor local|slurm)."""

    if status:

        typer.echo(study_status(existing_study_folder(study_file) or out or study_file))
        return
    spec = load_spec(study_file)
    folder = out or existing_study_folder(study_file) or Path("studies") / spec.name
    if dry_run:
        typer.echo(describe_plan(spec, folder))
        return
    writable_folder(folder, "--out" if out is not None else "study folder")
    if executor != "inline":

        opts = SubmitOptions(executor=executor, partition=partition, account=account, time_min=time_min,
                             gpus_per_run=gpus_per_run, processes_per_run=processes_per_run,
                             cpus_per_task=cpus_per_task, mem_gb=mem_gb, analysis_tasks=analysis_tasks,
                             sbatch=list(sbatch or []))
        jobs = submit_study(spec, folder, opts)
        typer.echo(f"study {spec.name}: " + "; ".join(f"{k} {' '.join(v) or '-'}" for k, v in jobs.items()))
        typer.echo(f"follow it with: lowrank-lens study {folder} --status")
        return
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    bad = [s for s in chosen if s not in STAGES]
    if bad:
        raise LensError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    result = run_study(spec, folder, chosen)
    typer.echo(f"study {spec.name}: {result}")


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Study folder.")] = Path("studies/demo"),
         methods: Annotated[str | None, typer.Option(
             help="Comma-separated methods instead of the study's six (see `lowrank-lens list`); time grows with "
                  "their number (about 1.8 minutes per method on 2 cores, more for the pairwise metrics).")] = None,
         ) -> None:
    """The whole study offline on a CPU: 6 methods x 3 seeds on the embedded corpus, then the report."""

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if chosen is not None and not chosen:
        raise LensError("--methods is empty; give comma-separated method names (see `lowrank-lens list`)")
    result = run_study(demo_spec(chosen), writable_folder(out, "--out"))
    typer.echo(f"report: {result}")


@app.command()
def report(sources: Annotated[list[Path], typer.Argument(
               help="Study folders, run folders or imported series (`lowrank-lens import`).")],
           out: Annotated[Path | None, typer.Option(
               help="Folder of a report over several sources (its findings/ and report/); a single study's "
                    "report goes into <study>/report without it.")] = None) -> None:
    """The HTML report: of one study (its findings recomputed first), or of several sources side by side with
    the differences between them, each source labelled by its folder name."""
    typer.echo(f"report: {report_sources(sources, writable_folder(out, '--out') if out is not None else None)}")


@app.command("config")
def show_config(
    preset: Preset = "micro",
    method: MethodOpt = "full-rank",
    set_: SetOpt = None,
) -> None:
    """Print the resolved config of a preset x method (with overrides) as JSON."""
    cfg = resolve_config(preset, method, None, None, None, None, None, None, set_)
    typer.echo(json.dumps(cfg.to_dict(), indent=2))


@app.command("list")
def list_things() -> None:
    """List presets, methods and metrics."""

    typer.echo("presets:")
    for name, shape in MODEL_SHAPES.items():
        n = count_parameters(build_model(shape, device="meta"))
        typer.echo(f"  {name:6s} hidden {shape.hidden_size:5d}  layers {shape.num_layers:3d}  "
                   f"vocab {shape.vocab_size:6d}  {n / 1e6:8.2f}M params")
    typer.echo("methods:")
    width = max(map(len, method_names()))
    for name in method_names():
        typer.echo(f"  {name:{width}s} {get_method(name).description}")

    typer.echo("metrics:")
    for name in metric_names():
        m = get_metric(name)
        typer.echo(f"  {name:22s} [{m.dimension}, {m.subject_kind}] {m.definition}")


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main() -> None:

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in before.items():  # clean up as for Ctrl-C, instead of dying mid-write
        if handler is signal.SIG_DFL:  # not under nohup, nor a caller's own handler
            signal.signal(sig, _terminate)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "datasets", "huggingface_hub", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except LensError as e:
        # One line whatever the message quotes (a library's multi-line text): scripts grep for `error: `.
        typer.echo("error: " + " ".join(str(e).split("\n")), err=True)
        sys.exit(2)
    except Terminated as e:
        typer.echo(f"stopped by signal {e.signum}: finished files kept, half-written ones removed", err=True)
        sys.exit(128 + e.signum)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
