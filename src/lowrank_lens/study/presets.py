"""Named studies: `demo` (the whole study offline on a laptop CPU, with learning rates tuned for its shape),
`demo-tune` (the tune stage that chose them), `ladder-xs|s|m` (three compute-matched CPU sizes with
tuning: the evidence in docs/results.md), `paper` (the study's protocol on GPUs) and `zoo` (the paper's protocol
over every registered method).

All are plain functions returning a StudySpec, so a user copies one into a TOML file and edits it. The ladder's
sizes are in study/ladder.py; the registry of names (`study_presets`) in study/spec_files.py.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from importlib import resources

from .. import methods as method_registry  # the registry as it is when the zoo is built (at call time)
from .spec import StudySpec

# The study's six methods (docs/study.md §1), written out: a preset must not grow when a method is registered.
PAPER_METHODS = ["full-rank", "galore", "fira", "cola", "sltrain", "relora"]

# The demo's model: the `micro` recipe (embedded corpus, trained BPE, packed rows, fp32) at a smaller
# shape and batch, so 6 methods x 3 seeds train in a few minutes on 2 CPU cores. Low-rank methods keep
# the 60m rank ratio (r = hidden/4 = 16): their CPU presets leave the rank automatic, and build_config
# resolves it from this final shape, after the overrides.
DEMO_TRAINING = [
    "model.hidden_size=64", "model.intermediate_size=176", "model.num_layers=4", "model.num_heads=4",
    "model.vocab_size=2048", "data.seq_len=64", "data.val_tokens=8192", "train.total_batch_size=16",
    "train.micro_batch_size=16", "train.steps=200", "train.checkpoints=4", "train.eval_every=0",
    "train.log_every=50", "optim.warmup_steps=20",
]
# Fewer directions and grid points than the study (D = 100, 25 points, 1000 sequences): enough for the
# method differences at this size to stand out of the seed-to-seed spread, within the time budget.
DEMO_METRICS = [
    "landscape_random.directions=8", "landscape_random.points=9",
    "landscape_pca.k=5", "landscape_pca.points=9",
    "trajectory_pca.points=9",
    "interpolation.points=9", "imib.points=9",
    "curvature.lanczos_iters=8", "curvature.hutchinson_probes=8", "curvature.sequences=8",
]


# The tune protocol of the CPU presets: the default grid (the preset's lr x 1/4 ... 4, a factor 2 apart) and up
# to 4 more points past an edge (tune_extend): the presets' lrs were set for 60m-1b models, and models this
# small may want steps several times larger (a pilot of the ladder's smallest size put every method at the top
# of a x1/8 ... x8 grid), so the stage follows the optimum outward instead of stopping at the grid's end.
CPU_TUNE_GRID = [0.25, 0.5, 1.0, 2.0, 4.0]
CPU_TUNE_EXTEND = 4

DEMO_TUNE_TABLE = "demo_tune.csv"
"""The demo-tune study's tune/tune.csv, shipped beside this module; regenerate it with
`lowrank-lens study demo-tune --stages tune` and copy studies/demo-tune/tune/tune.csv here."""


def demo_tuned_lrs() -> dict[str, float]:
    """{method: lr} chosen by the demo-tune study (the rows of the shipped table marked chosen)."""
    text = (resources.files(__package__) / DEMO_TUNE_TABLE).read_text(encoding="utf-8")
    return {r["method"]: float(r["lr"]) for r in csv.DictReader(text.splitlines()) if r["chosen"] == "True"}


def demo_tune() -> StudySpec:
    """The tune stage behind the demo's learning rates: the demo's runs, tuned over CPU_TUNE_GRID (and up to
    CPU_TUNE_EXTEND points past an edge) at full length. Only its tune stage is meant to run
    (`lowrank-lens study demo-tune --stages tune`)."""
    base = _demo_spec(PAPER_METHODS, {})
    return dataclasses.replace(base, name="demo-tune", tune=True, tune_grid=list(CPU_TUNE_GRID),
                               tune_extend=CPU_TUNE_EXTEND,
                               notes=["The tune stage that chose the demo's learning rates."])


def demo(methods: list[str] | None = None) -> StudySpec:
    """The demo over the study's six methods, or over `methods` (`lowrank-lens demo --methods ...`): the time
    grows with the number of methods (training linearly, the cross-run metrics with the pairs). Each method
    trains with the lr the demo-tune study chose for this shape (shipped in demo_tune.csv); a method outside
    that table keeps its preset's lr, and the spec's notes say so."""
    return _demo_spec(list(methods or PAPER_METHODS), demo_tuned_lrs())


def _demo_spec(methods: list[str], lrs: dict[str, float]) -> StudySpec:
    untuned = [m for m in methods if m not in lrs]
    tuned_note = (f"Learning rates tuned for this shape by the demo-tune study (src/lowrank_lens/study/"
                  f"{DEMO_TUNE_TABLE}: the lowest final validation loss over the preset lr x 1/4 ... 4 and up to "
                  f"{CPU_TUNE_EXTEND} points past an edge, seed 1000)"
                  + (f"; {', '.join(untuned)} keep(s) the preset's lr (not in that table)." if untuned else "."))
    return StudySpec(
        name="demo", methods=methods, scales=["micro"], seeds=[0, 1, 2],
        overrides=list(DEMO_TRAINING),
        method_overrides={m: [f"optim.lr={lrs[m]!r}"] for m in methods if m in lrs},
        metric_overrides=list(DEMO_METRICS), analysis_steps="all", sequences=32, eval_batch_size=32,
        downstream_tasks=["lens_mc"], downstream_seeds=[0], jobs=max(1, os.cpu_count() or 1),
        notes=["CPU demo: micro recipe at hidden 64 / 4 layers / vocab 2048, 200 steps of 16 x 64 tokens, "
               "low-rank methods at rank = hidden/4 = 16; "
               "metrics with reduced directions, grid points and 32 validation sequences of 64 tokens (curvature: 8 "
               "sequences, 8 Lanczos steps and 8 Hutchinson probes; the study: 100 directions, 25 points, 1000 "
               "sequences of 256 tokens). About 0.4 tokens per parameter: far from the study's protocol.",
               *([tuned_note] if lrs else [])],
    )


def paper() -> StudySpec:
    """The study's grid (docs/study.md §1): six methods at 60m/130m/350m on C4 with t5-base, 3 seeds (the study
    ran one), its checkpoints and metric protocol (every metric's defaults), its downstream task set."""
    return StudySpec(name="paper", methods=list(PAPER_METHODS), scales=["60m", "130m", "350m"], seeds=[0, 1, 2],
                     sequences=1000, eval_batch_size=64, downstream_tasks=["study"], downstream_seeds=[0, 1, 2, 3, 4],
                     gpus_per_run=1)


def zoo() -> StudySpec:
    """The paper's protocol over every registered method, for the comparison the study did
    not make. The list is resolved when the study is created and saved in its study.json, so a study folder
    keeps its methods when more are registered later. Claims that name a method of the study (5, 8) stay
    as they are; each method's per-scale defaults are its preset's (docs/methods.md)."""
    return dataclasses.replace(paper(), name="zoo", methods=method_registry.method_names())
