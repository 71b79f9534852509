"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

A reader (or a crash) never sees a half-written file: it sees the old file or the new one; two processes
writing the same artefact at once both end with one complete file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import LensError


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back (once, at import: no race)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
"""The mode a plain open() gives a new file; every file the project writes gets it."""


DISK_NEARLY_FULL = 1 << 20  # bytes: a failed write with less than this left is put down to a full disk


def is_disk_full(error: BaseException, where: str | Path | None = None) -> bool:
    """Whether a write failed for lack of space: an OSError's errno, the text of the errors safetensors (a
    Rust io::Error, "os error 28") and torch.save ("file write failed") raise, or, since torch.save may
    only report a short write ("unexpected pos"), less than DISK_NEARLY_FULL bytes free at `where`
    (checked before the failed write's partial files are removed)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    if any(s in text for s in ("No space left", "StorageFull", "os error 28", "code: 28", "Disk quota",
                               "file write failed")):
        return True
    if where is not None:
        try:
            st = os.statvfs(where)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < DISK_NEARLY_FULL
    return False


def disk_full_message(what: str | Path) -> str:
    return (f"disk full while writing {what}; nothing complete was replaced (earlier files are intact): free "
            f"space, then rerun the same command (with --resume for a training run)")


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` atomically, on error it is removed.

    The temporary name keeps dest's suffix because some writers (np.save) append one otherwise.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask), so
        # reports, checkpoints and tables can be shared and served like any other file.
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, dest)
    except OSError as e:
        if is_disk_full(e):
            raise LensError(disk_full_message(dest)) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then move tmp_path over `path`."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
