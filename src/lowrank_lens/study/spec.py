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
import functools
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import LensError

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
        from ..methods import method_names
        from ..presets import preset_names

        for f in dataclasses.fields(self):
            _check_type(getattr(self, f.name), _field_types()[f.name], f.name)
        if not NAME_RE.fullmatch(self.name):
            raise LensError(f"study name {self.name!r} must be a plain folder name: letters, digits, '-', '_' or "
                            f"'.', not starting with '.', no '/', at most 100 characters")
        from .imported import check_entries, imported_runs

        check_entries(self.imported)
        if not self.methods and not self.imported:
            self.methods = method_names()
        _known("method", self.methods, method_names())
        _known("scale", self.scales, preset_names())
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
        self._check_analysis()
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
            from .tune import plan_proxies

            plan_proxies(self)  # every proxy's config resolved and range-checked (an lr above 1 fails here)

    def _check_analysis(self) -> None:
        """Checkpoint steps, metric names, metric options and prediction features, as the analysis and
        prediction stages will read them."""
        from ..analysis.subjects import parse_steps

        try:
            parse_steps(self.analysis_steps)
        except LensError:
            raise LensError(f"study analysis_steps {self.analysis_steps!r}: use 'all', 'final' or comma-separated "
                            f"steps such as '0,500,final'") from None
        if not (self.metrics or self.metric_overrides or self.predict_features):
            return  # nothing names a metric: spare the registry's imports (transformers, ~5 s)
        from ..analysis.metrics import get_metric, metric_names
        from ..typed_fields import build_section

        _known("metric", self.metrics, metric_names())
        chosen = self.metrics or metric_names()
        options: dict[str, dict[str, str]] = {}
        for item in self.metric_overrides:
            key, eq, value = item.partition("=")
            metric, dot, option = key.strip().partition(".")
            if not (eq and dot and option):
                raise LensError(f"study metric_overrides entry {item!r} is not of the form metric.option=value")
            _known("metric_overrides metric", [metric], metric_names())
            if metric not in chosen:
                raise LensError(f"study metric_overrides entry {item!r} is for {metric!r}, which the study does not "
                                f"compute (metrics: {', '.join(chosen)})")
            options.setdefault(metric, {})[option] = value
        for metric, values in options.items():  # the same build as analysis/runner.py build_metrics
            build_section(get_metric(metric).Config, values, metric)
        for feat in self.predict_features:
            metric, dot, column = feat.partition(".")
            if not (dot and column) or metric not in chosen:
                raise LensError(f"study predict_features entry {feat!r} is not <metric>.<column> of a computed "
                                f"metric (metrics: {', '.join(chosen)}); e.g. landscape_random.es")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(StudySpec)


_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", list[str]: "a list of strings",
               list[int]: "a list of integers", list[float]: "a list of numbers", float: "a number",
               dict[str, list[str]]: 'a table of string lists (name = ["section.field=value", ...])'}


def _check_type(value: Any, tp: Any, name: str) -> None:
    """One study field against its annotation (str, int, list[str], list[int], dict[str, list[str]]); a
    bool is not an int and neither is a float (seeds = [1.5] would name a run seed1.5 that trains seed 1)."""
    if not _is(value, tp):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise LensError(f"study {name} expects {_TYPE_WORDS[tp]}, got {shown}")


def _is(value: Any, tp: Any) -> bool:
    if tp is Any:  # checked by its own validator (imported entries: study/imported.py)
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is(k, args[0]) and _is(v, args[1]) for k, v in value.items())
    if tp is float:  # an integer is a number too (tune_grid = [1, 2]); TOML inf and nan are caught by the checks
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:  # bool subclasses int; TOML 1e400 loads as the float inf, which is caught here too
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return isinstance(value, tp)


def _known(what: str, values: list[str], valid: list[str]) -> None:
    for v in values:
        if v not in valid:
            raise LensError(f"study {what} {v!r} is unknown; choose from {', '.join(valid)}")


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
        from ..presets import build_config

        cfg = build_config(self.scale, self.method, list(self.overrides))
        cfg.notes.extend(self.notes)
        return cfg


def run_names(spec: StudySpec) -> list[str]:
    """Every run of the study, trained then imported (the names of its folders under runs/)."""
    from .imported import imported_runs

    return [r.run_name for r in plan_runs(spec)] + [r.run_name for r in imported_runs(spec.imported)]


def plan_runs(spec: StudySpec, tuned: dict[tuple[str, str], float] | None = None,
              seeds: list[int] | None = None) -> list[PlannedRun]:
    """The resolved grid, scale-major (small scales first), then method, then seed. `tuned` ({(scale, method):
    lr}, from the tune stage: study/tune.py) sets each run's optim.lr after the study's overrides; `seeds`
    plans only those of the study's seeds."""
    from ..presets import build_config
    from ..runfolder.files import run_name

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
                    first = build_config(scale, method, list(ov))
                except LensError as e:
                    raise LensError(f"study run {name}: {e}") from None
                if lr is not None:
                    from .tune import tune_note

                    notes = (tune_note(spec, lr),)
                    first.notes.extend(notes)
                out.append(PlannedRun(scale, method, seed, first, name, tuple(ov), True, notes))
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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LensError(f"study file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise LensError(f"cannot parse study file {path}: {str(e).splitlines()[0]}") from None
    if isinstance(d, dict) and isinstance(d.get("spec"), dict):
        d = d["spec"]  # a study folder's study.json record
    if not isinstance(d, dict):
        raise LensError(f"study file {path} must hold a table of study fields (name, methods, ...), "
                        f"not a {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(StudySpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise LensError(f"unknown study field(s) {unknown} in {path}; valid: {', '.join(sorted(known))}")
    if isinstance(d.get("imported"), list) and folder is None:  # a study file: its paths are relative to it
        from .imported import resolve_paths

        d["imported"] = resolve_paths(d["imported"], path.parent)
    return StudySpec(**d)
