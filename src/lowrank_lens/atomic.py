"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

A reader (or a crash) never sees a half-written file: it sees the old file or the new one; two processes
writing the same artefact at once both end with one complete file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back (once, at import: no race)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


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
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
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
