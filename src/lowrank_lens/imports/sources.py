"""Finding the checkpoint series in what a user points `lowrank-lens import` at.

A SOURCE is one of:
- a folder of checkpoint folders, each a Hugging Face model folder (config.json + weights): a Trainer's
  `checkpoint-N/`, or `step_N/`, `step-N/`, `stepN/`, `model_N/`, `iter_N/`, `global_stepN/`; the step is the
  number in the name, else trainer_state.json's global_step;
- one model folder (a single checkpoint; its step from trainer_state.json, else 0);
- a hub repo id (`org/name`) with `--revisions step1000,step2000` (or none: its main revision), fetched
  through huggingface_hub's cache; offline (HF_HUB_OFFLINE=1) only revisions already in the cache load,
  and anything else fails at once with one line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, snapshot_download

from ..errors import LensError, first_line

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_STEP_NAME = re.compile(r"^(?:checkpoint|step|model|iter|global_step|ckpt)[-_]?(\d+)$", re.IGNORECASE)
_STEP_REVISION = re.compile(r"(\d+)")
STEP_LIMIT = 2**62
"""A step number beyond this (a folder checkpoint-99999999999999999999) is a name, not a step."""
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class Snapshot:
    step: int
    folder: Path
    """A model folder: config.json and the weights, maybe tokenizer files."""
    origin: str
    """Where it came from, for provenance ('checkpoint-500', 'hub EleutherAI/pythia-70m@step1000')."""


def is_model_folder(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file() and any((p / f).is_file() for f in WEIGHT_FILES)


def _trainer_step(folder: Path) -> int | None:
    f = folder / "trainer_state.json"
    if not f.is_file():
        return None
    try:
        step = json.loads(f.read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return int(step) if isinstance(step, int) and step >= 0 else None


def _step_of(folder: Path) -> int | None:
    m = _STEP_NAME.match(folder.name)
    return int(m.group(1)) if m else _trainer_step(folder)


def local_series(source: Path) -> list[Snapshot]:
    """The checkpoints of a local folder, oldest first (see the module docstring)."""
    if not source.exists():
        raise LensError(f"import source {source} does not exist; pass a folder of checkpoints, a model folder, "
                        f"or a hub repo id with --revisions")
    children = sorted(d for d in source.iterdir() if is_model_folder(d)) if source.is_dir() else []
    if not children:
        if is_model_folder(source):
            return [Snapshot(_trainer_step(source) or 0, source, source.name)]
        raise LensError(f"{source} holds no Hugging Face checkpoint: a model folder has config.json and one of "
                        f"{', '.join(WEIGHT_FILES)}, a series is a folder of such folders (checkpoint-N/, step_N/)")
    steps = {d: _step_of(d) for d in children}
    unnamed = [d.name for d, s in steps.items() if s is None]
    if unnamed:
        raise LensError(f"cannot tell the training step of {', '.join(unnamed[:3])} in {source}: name checkpoint "
                        f"folders checkpoint-N / step_N / model_N, or give each a trainer_state.json")
    huge = next((d for d, s in steps.items() if s >= STEP_LIMIT), None)
    if huge is not None:
        raise LensError(f"{huge} says step {steps[huge]:.3g}, past any training run (steps are below 2**62); "
                        f"rename the folder with its real step (checkpoint-N)")
    by_step: dict[int, Path] = {}
    for d, s in steps.items():
        if s in by_step:
            raise LensError(f"{by_step[s].name} and {d.name} in {source} are both step {s}; keep one")
        by_step[s] = d
    return [Snapshot(s, by_step[s], by_step[s].name) for s in sorted(by_step)]


def looks_like_repo_id(source: str) -> bool:
    return not Path(source).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None


def hub_series(repo_id: str, revisions: list[str], cache_dir: str | None = None) -> list[Snapshot]:
    """Each revision's snapshot folder through huggingface_hub (its cache: HF_HUB_CACHE, or cache_dir). The step
    of a revision is the number in its name (step1000 -> 1000), else its position in --revisions."""

    revs = revisions or ["main"]
    out: list[Snapshot] = []
    for i, rev in enumerate(revs):
        try:
            folder = snapshot_download(repo_id, revision=rev, allow_patterns=HUB_FILES, cache_dir=cache_dir)
        except Exception as e:  # offline cache misses, HTTP and connection errors: all one line
            offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = ("the hub is offline here (HF_HUB_OFFLINE=1) and this revision is not in the local hub cache; "
                    "run once with hub access, or import a local folder" if offline else
                    "check the repo id and revision, and hub access (HF_TOKEN for a gated repo)")
            raise LensError(f"cannot fetch {repo_id}@{rev} from the Hugging Face hub ({type(e).__name__}: "
                            f"{first_line(e)[:160]}); {hint}") from None
        m = _STEP_REVISION.search(rev)
        step = int(m.group(1)) if m else i
        if step >= STEP_LIMIT:
            raise LensError(f"--revisions {rev} says step {step:.3g}, past any training run; name revisions by their "
                            f"step (step1000)")
        if any(s.step == step for s in out):
            raise LensError(f"revisions {revs} give step {step} twice; name revisions by their step (step1000)")
        out.append(Snapshot(step, Path(folder), f"hub {repo_id}@{rev}"))
    if not all(is_model_folder(s.folder) for s in out):
        bad = next(s for s in out if not is_model_folder(s.folder))
        raise LensError(f"{bad.origin} has no config.json and model weights ({', '.join(WEIGHT_FILES)})")
    return sorted(out, key=lambda s: s.step)
