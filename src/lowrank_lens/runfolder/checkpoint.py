"""Self-describing checkpoints (docs/design.md "Run format"), written atomically and loaded without unpickling.

    ckpt/step_000120/
      model.safetensors   the trained parameterization as-is (factors, sparse values, LoRA + frozen W)
      meta.json           step, tokens, validation, method config, memory accounting, model_sha256
      state.pt            optimizer / RNG / step for exact resume: plain tensors, loaded with weights_only=True

A checkpoint directory is built under a temporary name and renamed into place only when complete, so a
crash or a full disk never leaves a half-written `step_*` behind; the previous checkpoints stay intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import FILE_MODE, is_disk_full
from ..errors import LensError, first_line
from .files import read_json_object

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX, _OLD_PREFIX = ".tmp-", ".old-"
_INTERRUPTED = re.compile(r"^(?P<kind>\.tmp-|\.old-)(?P<name>step_\d+|resume)-\d+$")
_REQUIRED = ("model.safetensors", "meta.json", "state.pt")
RESUME_DIR = "resume"
RESUME_KEYS = ("step", "tokens", "optimizer", "rng_cpu", "rng_cuda")
"""What state.pt must hold (train/loop.py Trainer.save writes it, Trainer.restore reads it). Optional, absent in
older checkpoints: "skipped" and "trackers" (the log sinks' run identities, train/logs.py saved_trackers)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def checkpoint_steps(total_steps: int, n: int) -> list[int]:
    """Step 0, then n evenly spaced steps ending at the final one (e.g. 1000, 2000, ... 10000)."""
    return sorted({0} | {round(total_steps * k / n) for k in range(1, n + 1)})


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any],
                    resume_state: dict[str, Any]) -> Path:
    """Write a complete checkpoint directory at `path` atomically (replacing an older one of that name).

    Every failure to write (a full disk in any of the three writers, which raise OSError, SafetensorError
    or RuntimeError) leaves the earlier checkpoints as they were and is one line, never a traceback.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "lowrank-lens"})
        torch.save(resume_state, tmp / "state.pt")
        meta = {**meta, "format_version": FORMAT_VERSION, "model_sha256": file_sha256(tmp / "model.safetensors")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        for name in _REQUIRED:
            os.chmod(tmp / name, FILE_MODE)  # safetensors creates 0600; all three files get one mode
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.parent / f"{_OLD_PREFIX}{path.name}-{os.getpid()}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError, RuntimeError) as e:
        full = is_disk_full(e, path.parent)  # before the partial files go and free their space
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise LensError(f"disk full while saving checkpoint {path}; earlier checkpoints are intact — free "
                            f"space, then rerun the same command with --resume") from None
        raise LensError(f"could not write checkpoint {path} ({type(e).__name__}: {first_line(e)}); earlier "
                        f"checkpoints are intact — fix the cause, then rerun the same command with --resume") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def recover_interrupted_saves(run_dir: Path) -> list[str]:
    """Tidy what a save killed half-way leaves in ckpt/ (call it only while holding the run's lock).

    `.tmp-<name>-<pid>` is a checkpoint that was never renamed into place: removed. `.old-<name>-<pid>` is
    the previous complete checkpoint of that name, moved aside just before the new one took its place: if
    the kill came between the two renames, `<name>` is missing and the old one is moved back; otherwise it
    is removed. Returns what was done, one phrase per folder.
    """
    ckpt = Path(run_dir) / "ckpt"
    done: list[str] = []
    if not ckpt.is_dir():
        return done
    for p in sorted(ckpt.iterdir()):
        m = _INTERRUPTED.match(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        target = ckpt / m.group("name")
        if m.group("kind") == _OLD_PREFIX and not target.exists() and all((p / f).is_file() for f in _REQUIRED):
            os.rename(p, target)
            done.append(f"restored {target.name} from {p.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}")
    return done


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first; the rolling resume one included."""
    ckpt = Path(run_dir) / "ckpt"
    found: list[tuple[int, Path]] = []
    if not ckpt.is_dir():
        return found
    for p in ckpt.iterdir():
        m = _STEP_DIR.match(p.name)
        if (m or p.name == RESUME_DIR) and all((p / f).is_file() for f in _REQUIRED):
            step = int(m.group(1)) if m else read_meta(p)["step"]
            found.append((step, p))
    return sorted(found, key=lambda sp: (sp[0], sp[1].name != RESUME_DIR))


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a checkpoint: a JSON object with an integer "step", else one LensError naming the file
    (every reader of checkpoints comes through here, so each command reports a damaged meta.json alike)."""
    fix = "it is corrupt — delete the checkpoint and resume from an earlier one"
    meta = read_json_object(Path(path) / "meta.json", f"the meta.json of checkpoint {path}", fix)
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise LensError(f"checkpoint {path} has a meta.json without a valid 'step' (got {step!r}); {fix}")
    return meta


# Content hashes this process has already checked: (path, size, mtime, inode) -> sha256. Analysis reads a
# checkpoint once per metric; hashing it once per process keeps verification cheap.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def verified_sha256(file: Path, expected: str | None) -> str:
    """The SHA-256 of `file`, checked against `expected` (skipped only when no hash was recorded)."""
    st = os.stat(file)
    key = (str(Path(file).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _VERIFIED:
        _VERIFIED[key] = file_sha256(file)
    actual = _VERIFIED[key]
    if expected and expected != actual:
        raise LensError(f"checkpoint {Path(file).parent} is corrupt (model.safetensors does not match its "
                        f"recorded hash); delete it and resume from an earlier checkpoint")
    return actual


def checkpoint_sha256(path: Path) -> str:
    """The verified content hash of a checkpoint's weights: what caches of its results are keyed by."""
    path = Path(path)
    return verified_sha256(path / "model.safetensors", read_meta(path).get("model_sha256"))


def load_model_state(path: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of model.safetensors, checked: the content hash recorded in meta.json (once per file per
    process; `verify=False` skips it) and that every floating-point value is finite (a diverged run)."""
    path = Path(path)
    file = path / "model.safetensors"
    if not file.is_file():
        raise LensError(f"no model.safetensors in {path}; is it a lowrank-lens checkpoint directory (ckpt/step_*)?")
    if verify:
        verified_sha256(file, read_meta(path).get("model_sha256"))
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise LensError(f"checkpoint {path} is corrupt or truncated ({e}); delete it and resume from an "
                        f"earlier checkpoint") from None
    bad = nonfinite_tensors(state)
    if bad:
        raise LensError(f"checkpoint {path} holds non-finite weights ({', '.join(bad[:3])}"
                        f"{' ...' if len(bad) > 3 else ''}): it comes from a diverged run; use an earlier "
                        f"checkpoint, or retrain with a lower optim.lr")
    return state


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_resume_state(path: Path) -> dict[str, Any]:
    """The optimizer/RNG state. weights_only=True: plain tensors and containers only, nothing unpickled."""
    try:
        state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign pickles
        raise LensError(f"checkpoint {path} has a corrupt or truncated state.pt ({type(e).__name__}); delete "
                        f"the checkpoint and resume from an earlier one") from None
    # What Trainer.restore reads: checked here, so a damaged file is this one line and not a KeyError later.
    missing = [k for k in RESUME_KEYS if k not in state] if isinstance(state, dict) else list(RESUME_KEYS)
    if not missing and not isinstance(state["optimizer"], dict):
        missing = ["optimizer (a state dict)"]
    if missing:
        raise LensError(f"checkpoint {path} has a state.pt without {', '.join(missing)}; it is corrupt — delete "
                        f"the checkpoint and resume from an earlier one")
    return state
