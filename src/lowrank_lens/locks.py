"""Advisory locks for work two processes should not both do: a study folder, one analysis result.

flock(2) on a small file that records the holder's pid: the kernel drops the lock when the holder exits
or is killed, so no lock is ever stale. On a file system without locks (some network mounts) the work
goes on unlocked, with a warning. (A run folder has its own lock, runfolder/folder.py RunLock.)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("lowrank_lens")
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class FileLock:
    """An exclusive lock on `path` (created if missing) until release() or the end of a `with` block.

    `wait=False`: raise BusyError at once when another process holds it; `wait=True`: block until it is free
    (logging once who is being waited for)."""

    def __init__(self, path: Path, wait: bool, what: str = "") -> None:
        self.path, self.fd = Path(path), None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in _BUSY:
                log.warning(f"{self.path.parent}: this file system has no file locks ({e.strerror}); make sure "
                            f"only one process works here")
                return
            holder = self.holder()
            if not wait:
                self.release()
                raise BusyError(holder) from None
            log.info(f"waiting for pid {holder}, which is computing {what or self.path.stem}")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def holder(self) -> str:
        return os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown" if self.fd is not None else ""

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class BusyError(Exception):
    """Another process holds the lock; `holder` is its pid as it wrote it."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder
