"""Claiming a run directory safely: names that stay inside --out, a marker that says the folder is ours,
and an exclusive lock while a process trains in it.

The rules (README "What the toolkit guarantees under faults"):
- a run name is one plain path component: no `/`, no `..`, not absolute, at most 255 bytes;
- a run folder that is a symbolic link is refused (its files would land wherever the link points);
- lowrank-lens never deletes a folder it did not create. A new run folder gets the marker file
  `.lowrank-lens-run` before anything else; an existing folder is used only if it is empty, carries the
  marker, or holds a lowrank-lens config.json (runs made before the marker existed). Restarting a run that
  died before its step-0 checkpoint overwrites the files it wrote, one by one; it never removes the folder;
- one process at a time trains in a run folder: `.lock` is locked with flock(2) for the whole run, and a
  second `train` / `resume` of the same run stops at once with one line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from pathlib import Path

from ..errors import LensError
from .log import read_log

log = logging.getLogger("lowrank_lens")

MARKER = ".lowrank-lens-run"
LOCK = ".lock"
MAX_NAME_BYTES = 255  # NAME_MAX of every common Linux and macOS file system


def check_run_name(name: str) -> str:
    """`name` if it is a safe single folder name, else a one-line LensError saying which rule it breaks."""
    fix = "pass a plain folder name such as my-run-1"
    if not name or name in (".", ".."):
        raise LensError(f"run name {name!r} is not a folder name; {fix}")
    if "/" in name or "\\" in name or os.path.isabs(name):
        raise LensError(f"run name {name!r} contains a path separator; runs are created inside --out: {fix}")
    if "\0" in name:
        raise LensError(f"run name {name!r} contains a NUL character; {fix}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise LensError(f"run name is {len(name.encode())} bytes long; file systems allow {MAX_NAME_BYTES}: "
                        f"pass a shorter --run-name")
    return name


def _is_lens_config(path: Path) -> bool:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "format_version" in d and "method" in d


def claim_run_dir(run_dir: Path) -> bool:
    """Create `run_dir` (marker first) or check that an existing one is a lowrank-lens run folder; True when
    this call created the folder."""
    if run_dir.is_symlink():
        raise LensError(f"run folder {run_dir} is a symbolic link; refusing to write through it — pass the "
                        f"real folder (--out {os.path.realpath(run_dir.parent)}) or another --run-name")
    if run_dir.exists() and not run_dir.is_dir():
        raise LensError(f"{run_dir} exists and is not a folder; pass another --run-name or --out")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LensError(f"cannot create run folder {run_dir} ({e.strerror}); pass a writable --out") from None
    marker = run_dir / MARKER
    if marker.is_file():
        return created
    contents = [p.name for p in run_dir.iterdir()]
    if contents and not _is_lens_config(run_dir / "config.json"):
        raise LensError(f"{run_dir} exists and was not made by lowrank-lens (it holds {', '.join(sorted(contents)[:3])}"
                        f"{', ...' if len(contents) > 3 else ''}); nothing was changed — pass another --run-name "
                        f"or --out")
    try:
        marker.write_text("This folder is a lowrank-lens run directory.\n")
    except OSError as e:
        raise LensError(f"cannot write in run folder {run_dir} ({e.strerror}); pass a writable --out") from None
    return created


def forget_unused_run_dir(run_dir: Path) -> None:
    """Remove a run folder this process created but never wrote a config into (it failed while building
    data or model): only the marker and the lock, then the folder if that left it empty."""
    if (run_dir / "config.json").exists():
        return
    for name in (MARKER, LOCK):
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # not empty: something else is in it, leave it


class RunLock:
    """Exclusive flock(2) on <run>/.lock, held until release() (or the process ends: the kernel drops it,
    so a killed run never leaves a stale lock). On a file system without locks it warns and goes on.

    A run folder copied with hard links (`cp -al A B`) shares A's .lock file: B's first lock replaces its own
    name with a fresh file (under a brief lock on B's folder, so two starters in B agree on one file) and never
    writes through to A's lock, nor waits on a process training A."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None
        with _folder_lock(run_dir):
            _unshare(self.path)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
                self.release()
                raise LensError(f"another process (pid {holder}) is training in {run_dir}; wait for it to finish, "
                                f"or pass another --run-name") from None
            log.warning(f"{run_dir}: this file system has no file locks ({e.strerror}); make sure only one "
                        f"process trains this run")
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


class _folder_lock:
    """A short flock on the run folder itself: serializes the unshare-and-open step of RunLock."""

    def __init__(self, folder: Path) -> None:
        self.fd = os.open(folder, os.O_RDONLY)

    def __enter__(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: RunLock warns about it just after
            pass

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _unshare(path: Path) -> None:
    """Give `path` its own inode when another name (a hard-linked copy of the run) shares it."""
    try:
        if os.stat(path).st_nlink <= 1:
            return
    except FileNotFoundError:
        return
    fresh = path.with_name(f"{path.name}.{os.getpid()}.new")
    fresh.write_bytes(b"")
    os.replace(fresh, path)


def check_restartable(run_dir: Path) -> None:
    """A run folder without a complete checkpoint may start over only if nothing was trained in it: its log
    holds no record after step 0 (it died before its step-0 checkpoint). Otherwise its checkpoints are
    gone (deleted or moved) and starting over would overwrite the log and config of a real run."""
    try:
        last = max((int(r.get("step", 0)) for r in read_log(run_dir) if isinstance(r, dict)), default=0)
    except (LensError, ValueError, TypeError):
        last = 1  # an unreadable log: treat as trained, never overwrite it
    if last > 0:
        raise LensError(f"{run_dir} has a training log up to step {last} but no complete checkpoint (ckpt/ is "
                        f"missing or empty); nothing was changed — restore ckpt/, or train under another --run-name")
