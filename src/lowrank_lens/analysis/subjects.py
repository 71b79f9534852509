"""What a metric is computed on: runs, their checkpoints, and subjects built from them.

A Subject names its checkpoints by run and step and carries their content hashes (the cache key). The
kinds (base.SUBJECT_KINDS) are enumerated here once, so metric plugins only declare which kind they use.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LensError
from ..methods import get_method
from ..runfolder.checkpoint import checkpoint_sha256, complete_checkpoints
from ..runfolder.files import imported_record, load_run_config, method_label, read_run_json

log = logging.getLogger("lowrank_lens")


@dataclass(frozen=True)
class CheckpointRef:
    run_id: str
    run_dir: Path
    step: int
    path: Path
    method: str

    @property
    def sha256(self) -> str:
        """The verified content hash of the weights, computed when a cache key first needs it (once per file
        per process): garbled weights are an error, never a cache hit, and checkpoints a command does not
        touch (analyze --steps final) are never read."""
        return checkpoint_sha256(self.path)


@dataclass
class RunRef:
    """A finished (or partly finished) run directory and its saved checkpoints."""

    run_dir: Path
    run_id: str
    method: str
    scale: str
    seed: int
    checkpoints: list[CheckpointRef]
    data: dict[str, Any]
    """The run's data fingerprint (config.json): tokenizer, corpus, pad id, sequence length."""
    has_dense_view: bool
    no_dense_reason: str
    is_baseline: bool
    vocab_size: int = 0
    """model.vocab_size of the run: evaluation token ids must lie below it (0: unknown, unchecked)."""

    @classmethod
    def open(cls, run_dir: str | Path) -> RunRef:

        run_dir = Path(run_dir)
        cfg = load_run_config(run_dir)
        raw = read_run_json(run_dir)
        label, imported = method_label(raw), imported_record(raw)
        fingerprint = raw.get("data_fingerprint")
        fingerprint = fingerprint if isinstance(fingerprint, dict) else {}
        ckpts = []
        for step, path in complete_checkpoints(run_dir):
            if path.name == "resume":
                continue
            ckpts.append(CheckpointRef(run_dir.name, run_dir, step, path, label))
        if not ckpts:
            raise LensError(f"run {run_dir} has no complete checkpoint to analyse; train it first")
        method_cls = get_method(cfg.method)
        baseline = bool(imported["baseline"]) if "baseline" in imported else method_cls.is_baseline
        return cls(run_dir=run_dir, run_id=run_dir.name, method=label, scale=cfg.scale, seed=cfg.train.seed,
                   checkpoints=ckpts, data=fingerprint, has_dense_view=method_cls.has_dense_view,
                   no_dense_reason=method_cls.no_dense_reason, is_baseline=baseline,
                   vocab_size=cfg.model.vocab_size)

    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def at(self, step: int) -> CheckpointRef | None:
        return next((c for c in self.checkpoints if c.step == step), None)

    def selected(self, steps: list[int] | None) -> list[CheckpointRef]:
        """Checkpoints at `steps` (None = all; -1 = the final one); steps a run lacks are left out."""
        if steps is None:
            return list(self.checkpoints)
        wanted = {self.checkpoints[-1].step if s == -1 else s for s in steps}
        return [c for c in self.checkpoints if c.step in wanted]


@dataclass(frozen=True)
class Subject:
    kind: str
    label: str
    """consecutive: 'consecutive' or 'init-final'; cross / reference: 'pair'; else the kind."""
    checkpoints: tuple[CheckpointRef, ...]
    runs: tuple[RunRef, ...]
    """The run of each checkpoint (same order); the first is the subject's home, where its cache lives."""

    @property
    def home(self) -> RunRef:
        return self.runs[0]

    def key_parts(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "checkpoints": [c.sha256 for c in self.checkpoints]}

    def describe(self) -> dict[str, Any]:
        """Table columns naming the subject."""
        first, last = self.checkpoints[0], self.checkpoints[-1]
        run = self.home
        d: dict[str, Any] = {"run": run.run_id, "method": run.method, "scale": run.scale, "seed": run.seed,
                             "kind": self.label}
        if self.kind in ("checkpoint", "run"):
            d["step"] = last.step
        elif self.kind == "consecutive":
            d.update(step=last.step, step_from=first.step)
        else:  # two runs at one step: the home run first, then the other
            other = self.runs[1]
            d.update(step=first.step, other_run=other.run_id, other_method=other.method)
        return d


def enumerate_subjects(kind: str, runs: list[RunRef], steps: list[int] | None,
                       reference: RunRef | None) -> list[Subject]:
    out: list[Subject] = []
    if kind == "checkpoint":
        for run in runs:
            out += [Subject("checkpoint", "checkpoint", (c,), (run,)) for c in run.selected(steps)]
    elif kind == "run":
        for run in runs:
            sel = tuple(run.selected(steps))
            if len(sel) >= 2:
                out.append(Subject("run", "run", sel, (run,) * len(sel)))
    elif kind == "consecutive":
        for run in runs:
            sel = run.selected(steps)
            out += [Subject("consecutive", "consecutive", (a, b), (run, run)) for a, b in itertools.pairwise(sel)]
            if len(sel) >= 3:
                out.append(Subject("consecutive", "init-final", (sel[0], sel[-1]), (run, run)))
    elif kind == "cross":
        for a, b in itertools.combinations(runs, 2):
            if a.scale != b.scale or a.seed != b.seed or a.method == b.method:
                continue
            out.extend(_pairs("cross", a, b, steps))
    elif kind == "reference":
        for run in runs:
            ref = reference or _default_reference(run, runs)
            if ref is None or ref.run_dir == run.run_dir:
                continue
            out.extend(_pairs("reference", run, ref, steps))
    else:
        raise LensError(f"unknown subject kind {kind!r}")
    return out


def _default_reference(run: RunRef, runs: list[RunRef]) -> RunRef | None:
    """The baseline (full-rank) run with the same scale and seed, if one is among the runs."""
    return next((r for r in runs if r.is_baseline and r.scale == run.scale and r.seed == run.seed), None)


SAME_DATA_KEYS = ("tokenizer_hash", "corpus_hash", "seq_len", "mode")


def _pairs(kind: str, run: RunRef, other: RunRef, steps: list[int] | None) -> list[Subject]:
    """(run's checkpoint, other's checkpoint of the same step) for each selected step both runs saved."""
    _check_same_tokens(run, other)
    return [Subject(kind, "pair", (c, oc), (run, other)) for c in run.selected(steps)
            if (oc := other.at(c.step)) is not None]


def _check_same_tokens(a: RunRef, b: RunRef) -> None:
    """Runs compared on the same inputs must read them alike. An imported run's training data is unknown
    (trained elsewhere): with one, only the tokenizers are compared, where both are known."""
    if a.data.get("imported") or b.data.get("imported"):
        ha, hb = a.data.get("tokenizer_hash"), b.data.get("tokenizer_hash")
        if ha and hb and ha != hb:
            raise LensError(f"runs {a.run_id} and {b.run_id} use different tokenizers, so the same evaluation rows "
                            f"mean different text to them; compare runs of one tokenizer")
        return
    if any(a.data.get(k) != b.data.get(k) for k in SAME_DATA_KEYS):
        raise LensError(f"runs {a.run_id} and {b.run_id} were trained on different data/tokenizers, so their "
                        f"checkpoints cannot be compared; analyse them separately")


def check_steps(runs: list[RunRef], steps: list[int] | None) -> None:
    """LensError when `steps` selects no checkpoint of any run (the analysis would silently do nothing); a
    warning for each run lacking some of them (runs of different lengths can be analysed together)."""
    if steps is None or not runs:
        return
    asked = sorted({s for s in steps if s != -1})
    if any(run.selected(steps) for run in runs):
        for run in runs:
            lacking = [s for s in asked if run.at(s) is None]
            if lacking:
                log.warning(f"{run.run_id} has no checkpoint at step(s) {lacking} (it has {run.steps()}); "
                            f"skipped there")
        return
    raise LensError(f"no run has a checkpoint at step(s) {', '.join(map(str, asked))} ({runs[0].run_id} has "
                    f"steps {', '.join(map(str, runs[0].steps()))}); pass existing steps, 'final' or 'all'")


def parse_steps(steps: str) -> list[int] | None:
    """'all' -> None (every checkpoint), 'final' -> [-1], '0,500,final' -> [0, 500, -1]."""
    if steps.strip() == "all":
        return None
    out = []
    for part in steps.split(","):
        part = part.strip()
        if part == "final":
            out.append(-1)
        elif part.isdigit():
            out.append(int(part))
        else:
            raise LensError(f"--steps {steps!r}: use 'all', 'final' or comma-separated steps such as 0,500,final")
    return out
