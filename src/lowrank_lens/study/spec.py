"""A study: the grid methods x scales x seeds, and how its runs are analysed, evaluated and reported.

A study file is TOML or JSON with the fields of `StudySpec` (unknown keys raise), or a preset name:

    name = "my-study"
    methods = ["full-rank", "galore", "cola"]
    scales = ["60m"]
    seeds = [0, 1, 2]
    overrides = ["train.steps=2000"]                   # every run
    [scale_overrides]
    60m = ["data.source=/data/c4-local"]               # runs of one scale
    [method_overrides]
    full-rank = ["optim.lr=3e-3"]                      # runs of one method

`lowrank-lens study FILE --dry-run` prints the resolved run list and the training commands (torchrun lines
for GPU scales), so the grid can go to a cluster; the same command without --dry-run runs everything.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import LensError


@dataclass
class StudySpec:
    name: str = "study"
    methods: list[str] = field(default_factory=list)
    """Training methods (default: every registered method)."""
    scales: list[str] = field(default_factory=lambda: ["micro"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    overrides: list[str] = field(default_factory=list)
    """`section.field=value` applied to every run (after the preset)."""
    scale_overrides: dict[str, list[str]] = field(default_factory=dict)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    """Metric plugins to compute (default: all registered)."""
    metric_overrides: list[str] = field(default_factory=list)
    """`metric.field=value` options of the metrics (e.g. landscape_random.directions=20)."""
    analysis_steps: str = "all"
    """Checkpoints to analyse: 'all', 'final' or steps like 0,500,final."""
    sequences: int = 1000
    """Validation sequences every metric evaluates on (study: 1000)."""
    eval_batch_size: int = 32
    downstream_tasks: list[str] = field(default_factory=lambda: ["lens_mc"])
    """lm-eval task names (or the presets 'study' / 'commonsense'); [] skips downstream evaluation."""
    downstream_seeds: list[int] = field(default_factory=lambda: [0])
    downstream_limit: int = 0
    """Examples per task (0 = all)."""
    include_path: str = ""
    """Folder of local lm-eval task YAMLs (for offline copies of hub tasks)."""
    predict_features: list[str] = field(default_factory=list)
    """Metric columns added to perplexity for prediction (default: one summary scalar per metric family)."""
    gpus_per_run: int = 1
    """Processes per run in the printed torchrun commands."""
    jobs: int = 1
    """Runs trained at once on this machine, each with cpu_count / jobs threads (CPU studies: small models
    keep one core busier than two threads do; GPU studies: leave at 1 and send the commands to a cluster)."""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from ..methods import method_names
        from ..presets import preset_names

        if not self.methods:
            self.methods = method_names()
        valid = method_names()
        for m in self.methods:
            if m not in valid:
                raise LensError(f"study method {m!r} is unknown; choose from {', '.join(valid)}")
        for s in self.scales:
            if s not in preset_names():
                raise LensError(f"study scale {s!r} is unknown; choose from {', '.join(preset_names())}")
        if self.jobs < 1:
            raise LensError(f"study jobs must be >= 1, got {self.jobs}")
        if not self.seeds:
            raise LensError("a study needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise LensError(f"study seeds repeat: {self.seeds}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PlannedRun:
    scale: str
    method: str
    seed: int
    cfg: RunConfig
    run_name: str
    overrides: tuple[str, ...]
    """Every override on top of the preset (study-wide, per scale, per method, seed): the CLI line's --set."""


def plan_runs(spec: StudySpec) -> list[PlannedRun]:
    """The resolved grid, scale-major (small scales first), then method, then seed."""
    from ..presets import build_config

    out = []
    for scale in spec.scales:
        for method in spec.methods:
            for seed in spec.seeds:
                ov = (*spec.overrides, *spec.scale_overrides.get(scale, ()), *spec.method_overrides.get(method, ()),
                      f"train.seed={seed}")
                cfg = build_config(scale, method, list(ov))
                out.append(PlannedRun(scale, method, seed, cfg, f"{scale}-{method}-seed{seed}", tuple(ov)))
    return out


def existing_study_folder(source: str | Path) -> Path | None:
    """The study folder `source` names (a folder holding a study.json, not a preset name), else None."""
    from .presets import study_presets

    path = Path(source)
    return path if str(source) not in study_presets() and (path / "study.json").is_file() else None


def load_spec(source: str | Path) -> StudySpec:
    """A StudySpec from a TOML/JSON file, a preset name (see `study_presets`), or an existing study folder
    (its `study.json` record, whose "spec" holds the resolved spec), so a study can be re-run in place."""
    from .presets import study_presets

    presets = study_presets()
    if str(source) in presets:
        return presets[str(source)]()
    folder = existing_study_folder(source)
    path = folder / "study.json" if folder else Path(source)
    if not path.is_file():
        raise LensError(f"study {source!r} is neither a file, a study folder nor a preset; presets: "
                        f"{', '.join(presets)}")
    try:
        d = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise LensError(f"cannot parse study file {path}: {e}") from None
    if isinstance(d, dict) and isinstance(d.get("spec"), dict):
        d = d["spec"]  # a study folder's study.json record
    known = {f.name for f in dataclasses.fields(StudySpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise LensError(f"unknown study field(s) {unknown} in {path}; valid: {', '.join(sorted(known))}")
    return StudySpec(**d)
