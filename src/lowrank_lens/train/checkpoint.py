"""Self-describing checkpoints (design.md "Run format"), written atomically and loaded without unpickling.

    ckpt/step_000120/
      model.safetensors   the trained parameterization as-is (factors, sparse values, LoRA + frozen W)
      meta.json           step, tokens, validation, method config, memory accounting, model_sha256
      state.pt            optimizer / RNG / step for exact resume: plain tensors, loaded with weights_only=True

A checkpoint directory is built under a temporary name and renamed into place only when complete, so a
crash or a full disk never leaves a half-written `step_*` behind; the previous checkpoints stay intact.
"""

from __future__ import annotations

import errno
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

from ..errors import LensError

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_REQUIRED = ("model.safetensors", "meta.json", "state.pt")
RESUME_DIR = "resume"


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
    """Write a complete checkpoint directory at `path` atomically (replacing an older one of that name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "lowrank-lens"})
        torch.save(resume_state, tmp / "state.pt")
        meta = {**meta, "format_version": FORMAT_VERSION, "model_sha256": file_sha256(tmp / "model.safetensors")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        for name in _REQUIRED:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.parent / f".old-{path.name}-{os.getpid()}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise LensError(f"disk full while saving checkpoint {path}; earlier checkpoints are intact — free "
                            f"space, then rerun the same command with --resume") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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
    try:
        return json.loads((Path(path) / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LensError(f"checkpoint {path} has an unreadable meta.json ({e}); it is corrupt — delete it and "
                        f"resume from an earlier checkpoint") from None


def load_model_state(path: Path, verify: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of model.safetensors; `verify` also checks the content hash recorded in meta.json."""
    path = Path(path)
    file = path / "model.safetensors"
    if not file.is_file():
        raise LensError(f"no model.safetensors in {path}; is it a lowrank-lens checkpoint directory (ckpt/step_*)?")
    if verify:
        expected = read_meta(path).get("model_sha256")
        if expected and expected != file_sha256(file):
            raise LensError(f"checkpoint {path} is corrupt (model.safetensors does not match its recorded hash); "
                            f"delete it and resume from an earlier checkpoint")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise LensError(f"checkpoint {path} is corrupt or truncated ({e}); delete it and resume from an "
                        f"earlier checkpoint") from None


def load_resume_state(path: Path) -> dict[str, Any]:
    """The optimizer/RNG state. weights_only=True: plain tensors and containers only, nothing unpickled."""
    try:
        return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign pickles
        raise LensError(f"checkpoint {path} has a corrupt or truncated state.pt ({type(e).__name__}); delete "
                        f"the checkpoint and resume from an earlier one") from None
