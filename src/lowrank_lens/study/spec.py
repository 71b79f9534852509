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

This module holds `StudySpec` and what building one resolves: the planned runs (`plan_runs`, every run's
config) and the tune stage's proxy runs (`plan_proxies`; study/tune.py trains them). Reading a study file, a
preset or a study folder into a spec: study/spec_files.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The registries and build_config through their modules, at call time: a replaced one (a test's monkeypatch) is seen.
from .. import methods as method_registry
from .. import presets as scale_presets
from ..config import RunConfig
from ..errors import LensError
from ..runfolder.files import run_name
from .imported import check_entries, imported_runs
from .spec_checks import check_analysis, check_known, check_type

NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
"""A study name is the folder studies/<name>: one plain path component, so the study cannot write elsewhere."""
DOWNSTREAM_SEED_LIMIT = 2**32
"""Evaluation seeds go to np.random.seed (downstream/harness.py), which takes [0, 2**32)."""


@dataclass
class StudySpec:
    name: str = "study"
    """Folder name under studies/: letters, digits, '-', '_', '.', not starting with '.', at most 100."""
    methods: list[str] = field(default_factory=list)
    """Training methods (default: every registered method; the named presets list theirs explicitly)."""
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
    tune: bool = False
    """Choose each (scale, method)'s optim.lr by the tune stage before training (study/tune.py)."""
    tune_grid: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    """Multipliers of the method preset's lr that the tune stage tries (default: 5 points a factor 2 apart)."""
    tune_fraction: float = 1.0
    """Length of each proxy run as a fraction of the run's train.steps (its warmup scaled alike), in (0, 1]."""
    tune_extend: int = 0
    """Up to this many more lrs per (scale, method), one grid step at a time, past an end of the grid where
    the best lr lies (0: the grid alone)."""
    tune_seed: int = 1000
    """train.seed of the proxy runs: by default one the study's seeds do not use."""
    notes: list[str] = field(default_factory=list)
    imported: list[dict[str, Any]] = field(default_factory=list)
    """Series trained elsewhere, imported into the study's runs ([[imported]] path / method / scale / seed;
    study/imported.py). With imported runs and no `methods`, nothing is trained."""

    def __post_init__(self) -> None:
        """Validate the whole spec, down to every planned run's resolved config, so a mistake anywhere in a
        study file fails when it is loaded (also by --dry-run), not after hours of training."""
        for f in dataclasses.fields(self):
            check_type(getattr(self, f.name), _field_types()[f.name], f.name)
        if not NAME_RE.fullmatch(self.name):
            raise LensError(f"study name {self.name!r} must be a plain folder name: letters, digits, '-', '_' or "
                            f"'.', not starting with '.', no '/', at most 100 characters")
        check_entries(self.imported)
        if not self.methods and not self.imported:
            self.methods = method_registry.method_names()
        check_known("method", self.methods, method_registry.method_names())
        check_known("scale", self.scales, scale_presets.preset_names())
        for what, values in (("methods", self.methods), ("scales", self.scales), ("seeds", self.seeds),
                             ("metrics", self.metrics), ("downstream_tasks", self.downstream_tasks),
                             ("downstream_seeds", self.downstream_seeds), ("predict_features", self.predict_features)):
            dups = sorted({str(v) for v in values if values.count(v) > 1})
            if dups:
                raise LensError(f"study {what} repeat {', '.join(dups)}; list each once")
        if not self.seeds:
            raise LensError("a study needs at least one seed")
        for key, within, what in ((self.scale_overrides, self.scales, "scale"),
                                  (self.method_overrides, self.methods, "method")):
            stray = sorted(set(key) - set(within))
            if stray:
                raise LensError(f"study {what}_overrides name {what}(s) {stray} that the study does not train "
                                f"({what}s: {', '.join(within)}); remove them or add them to {what}s")
        for name, low in (("sequences", 1), ("eval_batch_size", 1), ("gpus_per_run", 1), ("jobs", 1),
                          ("downstream_limit", 0), ("tune_seed", 0), ("tune_extend", 0)):
            if getattr(self, name) < low:
                raise LensError(f"study {name} must be >= {low}, got {getattr(self, name)}")
        bad = [s for s in self.downstream_seeds if not 0 <= s < DOWNSTREAM_SEED_LIMIT]
        if bad:
            raise LensError(f"study downstream_seeds must be in [0, 2**32) (numpy's seed range), got {bad}")
        if self.downstream_tasks and not self.downstream_seeds:
            raise LensError("study downstream_seeds is empty; give at least one seed or set downstream_tasks = []")
        if any(not t.strip() for t in self.downstream_tasks):
            raise LensError(f"study downstream_tasks has an empty name: {self.downstream_tasks}")
        self._check_tune()
        check_analysis(self.analysis_steps, self.metrics, self.metric_overrides, self.predict_features)
        planned = plan_runs(self)  # every override resolved, typed and range-checked now
        clash = {r.run_name for r in imported_runs(self.imported)} & {r.run_name for r in planned}
        if clash:
            raise LensError(f"study imported runs {sorted(clash)} have the names of trained runs; give them another "
                            f"method label or scale")

    def _check_tune(self) -> None:
        grid = self.tune_grid
        if self.tune and not grid:
            raise LensError("study tune_grid is empty; give lr multipliers such as [0.25, 0.5, 1, 2, 4]")
        if any(not (math.isfinite(m) and m > 0) for m in grid) or len(set(grid)) != len(grid):
            raise LensError(f"study tune_grid {grid} must hold distinct positive multipliers of the preset's lr")
        if not 0 < self.tune_fraction <= 1:
            raise LensError(f"study tune_fraction {self.tune_fraction} must be in (0, 1]: the proxy runs' length "
                            f"as a fraction of the runs' steps")
        if self.tune:
            plan_proxies(self)  # every proxy's config resolved and range-checked (an lr above 1 fails here)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(StudySpec)


@dataclass(frozen=True)
class PlannedRun:
    scale: str
    method: str
    seed: int
    shape: RunConfig
    """The run's config, or, where `exact` is False, its (scale, method)'s first planned seed's: equal to it in
    everything but train.seed and the notes that list the overrides. Plans and --dry-run read only this."""
    run_name: str
    overrides: tuple[str, ...]
    """Every override on top of the preset (study-wide, per scale, per method, seed): the CLI line's --set."""
    exact: bool = True
    notes: tuple[str, ...] = ()
    """Notes the plan adds after the build (where the lr came from), on every seed's config."""

    @functools.cached_property
    def cfg(self) -> RunConfig:
        """The run's resolved config, built on first use: a study of 10 000 seeds plans in seconds."""
        if self.exact:
            return self.shape
        cfg = scale_presets.build_config(self.scale, self.method, list(self.overrides))
        cfg.notes.extend(self.notes)
        return cfg


def run_names(spec: StudySpec) -> list[str]:
    """Every run of the study, trained then imported (the names of its folders under runs/)."""
    return [r.run_name for r in plan_runs(spec)] + [r.run_name for r in imported_runs(spec.imported)]


def plan_runs(spec: StudySpec, tuned: dict[tuple[str, str], float] | None = None,
              seeds: list[int] | None = None) -> list[PlannedRun]:
    """The resolved grid, scale-major (small scales first), then method, then seed. `tuned` ({(scale, method):
    lr}, from the tune stage: study/tune.py) sets each run's optim.lr after the study's overrides; `seeds`
    plans only those of the study's seeds."""
    out = []
    for scale in spec.scales:
        for method in spec.methods:
            first: RunConfig | None = None
            notes: tuple[str, ...] = ()
            for seed in spec.seeds if seeds is None else seeds:
                lr = (tuned or {}).get((scale, method))
                ov = (*spec.overrides, *spec.scale_overrides.get(scale, ()), *spec.method_overrides.get(method, ()),
                      *([f"optim.lr={lr!r}"] if lr is not None else []), f"train.seed={seed}")
                name = run_name(scale, method, seed)
                if first is not None:  # the seed only sets train.seed (range-checked with the study's seeds)
                    out.append(PlannedRun(scale, method, seed, first, name, tuple(ov), False, notes))
                    continue
                try:
                    first = scale_presets.build_config(scale, method, list(ov))
                except LensError as e:
                    raise LensError(f"study run {name}: {e}") from None
                if lr is not None:
                    notes = (tune_note(spec, lr),)
                    first.notes.extend(notes)
                out.append(PlannedRun(scale, method, seed, first, name, tuple(ov), True, notes))
    return out


def study_run_dirs(spec: StudySpec, out: Path) -> list[Path]:
    """Every run folder of the study, trained then imported."""
    return [out / "runs" / name for name in run_names(spec)]


# ---- the tune stage's proxy runs (study/tune.py trains them and chooses) ---------------------------------
@dataclass(frozen=True)
class ProxyRun:
    scale: str
    method: str
    lr: float
    multiplier: float
    centre: float
    """The method preset's lr (after the study's overrides) that the grid multiplies."""
    run: PlannedRun


def _proxy_overrides(spec: StudySpec, base: PlannedRun, lr: float) -> list[str]:
    ov = [o for o in base.overrides if not o.startswith("train.seed=")]
    ov += [f"optim.lr={lr!r}", f"train.seed={spec.tune_seed}", "train.checkpoints=1", "train.eval_every=0"]
    if spec.tune_fraction < 1:
        steps = max(1, round(base.cfg.train.steps * spec.tune_fraction))
        warmup = round(base.cfg.optim.warmup_steps * spec.tune_fraction)
        ov += [f"train.steps={steps}", f"optim.warmup_steps={warmup}"]
    return ov


def proxy_bases(spec: StudySpec) -> dict[tuple[str, str], PlannedRun]:
    """One planned run per (scale, method): the config the proxies vary."""
    return {(r.scale, r.method): r for r in plan_runs(spec, seeds=spec.seeds[:1])}


def make_proxy(spec: StudySpec, base: PlannedRun, multiplier: float) -> ProxyRun:
    centre = base.cfg.optim.lr
    lr = float(f"{centre * multiplier:.6g}")  # a short, exact name and override for each grid point
    ov = _proxy_overrides(spec, base, lr)
    name = f"{base.scale}-{base.method}-lr{lr:g}"
    try:
        cfg = scale_presets.build_config(base.scale, base.method, ov)
    except LensError as e:
        raise LensError(f"study tune proxy {name}: {e}; change tune_grid") from None
    return ProxyRun(base.scale, base.method, lr, multiplier, centre,
                    PlannedRun(base.scale, base.method, spec.tune_seed, cfg, name, tuple(ov)))


def plan_proxies(spec: StudySpec) -> list[ProxyRun]:
    """The proxy runs of the grid (none when `tune` is off), scale-major like plan_runs; points past an edge
    (`tune_extend`) are added as the results ask for them (study/tune.py `settle`)."""
    if not spec.tune:
        return []
    return [make_proxy(spec, base, m) for base in proxy_bases(spec).values() for m in spec.tune_grid]


def tune_protocol(spec: StudySpec) -> str:
    """The tune stage's rule in a phrase: grid, extension, proxy length, selection seed."""
    steps = f"{spec.tune_fraction:g} of the run's steps" if spec.tune_fraction < 1 else "the run's own steps"
    extend = f" + up to {spec.tune_extend} past an edge" if spec.tune_extend else ""
    grid = ", ".join(f"{m:g}" for m in spec.tune_grid)
    return f"the preset lr x {grid}{extend}, {steps}, seed {spec.tune_seed}"


def tune_note(spec: StudySpec, lr: float) -> str:
    return (f"optim.lr {lr:g} chosen by the study's tune stage (tune/tune.csv: lowest final validation loss over "
            f"{tune_protocol(spec)})")
