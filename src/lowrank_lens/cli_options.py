"""What the commands of cli.py share: the common option types, the checks of option values (each a one-line
LensError naming the option) and the config built from the training options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .errors import LensError
from .presets import build_config
from .runfolder.checkpoint import complete_checkpoints
from .runfolder.files import load_run_config
from .runfolder.loading import check_checkpoint_fits

Preset = Annotated[str, typer.Option("--preset", "-p", help="Scale preset: nano, micro, 60m, 130m, 350m, 1b.")]
MethodOpt = Annotated[str, typer.Option("--method", "-m", help="Training method (see `lowrank-lens list`).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any config field: section.field=value "
                                                              "(sections: model, data, optim, train, method).")]


def at_least(low: int, **values: int | None) -> None:
    """LensError naming the option (--batch-size ...) of the first value below `low` (None: not given)."""
    for name, value in values.items():
        if value is not None and value < low:
            raise LensError(f"--{name.replace('_', '-')} {value} is out of range; it must be at least {low}")


def int_list(text: str, option: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: non-negative integers, at least one."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise LensError(f"{option} {text!r}: pass comma-separated non-negative integers such as 0,1,2")
    return [int(p) for p in parts]


def writable_folder(path: Path, option: str, target: Path | None = None) -> Path:
    """`path` if it can be this command's output folder: missing (it is created) or a folder, not a file nor
    under one, with names the file system allows, and the nearest existing folder writable by this user.
    `target`: the file the command writes in `path` (eval-downstream --out X.csv), named in the errors.

    Writability is os.access (the kernel's answer for this user: root passes mode bits but not a read-only
    mount), checked up front so a long computation does not fail at its first write."""
    shown = target or path
    for part in shown.parts:
        if len(os.fsencode(part)) > 255:  # NAME_MAX; Path.exists would raise ENAMETOOLONG
            raise LensError(f"{option} {str(shown)[:80]}...: a name in it is over 255 bytes; pass a shorter path")
    if target is None and path.exists() and not path.is_dir():
        raise LensError(f"{option} {path} is an existing file, not a folder; pass a folder (created if missing)")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise LensError(f"{option} {shown} lies under {probe}, which is a file; pass a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LensError(f"{option} {shown}: {probe} is not writable by this user; pass a folder you can write to")
    return path


def check_saved_run(run_dir: Path) -> None:
    """Before resuming: the newest checkpoint's tensors fit the saved config.json (an edited config would
    otherwise fail deep in load_state_dict, after the data and model were built)."""

    ckpts = complete_checkpoints(run_dir)
    if ckpts:
        check_checkpoint_fits(load_run_config(run_dir), ckpts[-1][1])


def resolve_config(preset: str, method: str, data: str | None, tokenizer: str | None, steps: int | None,
             seed: int | None, precision: str | None, device: str | None, sets: list[str] | None):

    overrides = []
    for key, value in (("data.source", data), ("data.tokenizer", tokenizer), ("train.steps", steps),
                       ("train.seed", seed), ("train.precision", precision), ("train.device", device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return build_config(preset, method, overrides + list(sets or []))
