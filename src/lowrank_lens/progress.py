"""Progress of a long loop: a tqdm bar on a terminal, a few log lines anywhere else (issue 25 §5).

    with Progress("Hessian-vector products", total, after_s=5.0) as p:
        for i in range(total):
            ...
            p.update(i + 1)

Nothing shows until the loop has run `after_s` seconds (quick loops stay silent). Then:

- on a terminal (stderr is a TTY, this is the only process drawing there and the `lowrank_lens` logger shows
  INFO): one bar, drawn in place and erased when the loop is closed (the caller's own line follows);
- elsewhere (a log file, CI, a pipe, a worker process or rank sharing the terminal): at most MAX_LINES log
  lines per loop whatever its length: the first once it reports, one at each quarter it passes, and its last
  item, each with done/total, elapsed and eta.

LOWRANK_LENS_PROGRESS=lines|bar|off overrides the choice; a logger above INFO (the study's training workers)
shows nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from typing import IO

from tqdm import tqdm

log = logging.getLogger("lowrank_lens")

ENV = "LOWRANK_LENS_PROGRESS"
MAX_LINES = 5
"""Log lines per loop at most: the first, one per quarter passed (25, 50, 75%), the last item."""


def progress_mode(stream: IO[str] | None = None) -> str:
    """'bar', 'lines' or 'off' for a loop reporting on `stream` (default: stderr, where the CLI logs)."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice == "off" or not log.isEnabledFor(logging.INFO):
        return "off"
    if choice in ("bar", "lines"):
        return choice
    return "bar" if _alone() and _isatty(sys.stderr if stream is None else stream) else "lines"


def _alone() -> bool:
    """No sibling process shares the terminal: not a worker process, not one rank of several."""
    return multiprocessing.parent_process() is None and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """One loop's progress: `update(done)` after each item (done counts from 1 to total), `close()` at its end
    (also by reaching total, or as a context manager); an update after close is ignored."""

    def __init__(self, desc: str, total: int, start: float | None = None, after_s: float = 0.0,
                 stream: IO[str] | None = None) -> None:
        self.desc, self.total = desc, max(0, int(total))
        self.start = time.perf_counter() if start is None else start
        """time.perf_counter() when the loop began (elapsed and eta count from it)."""
        self.after_s = after_s
        self.stream = sys.stderr if stream is None else stream
        self.mode = progress_mode(self.stream) if self.total else "off"
        self.closed = False
        self._bar = None
        self._quarter = -1  # the quarter (0-4) of the last line logged; -1: none yet

    def update(self, done: int) -> None:
        if self.closed or self.mode == "off":
            return
        done = min(max(0, int(done)), self.total)
        elapsed = time.perf_counter() - self.start
        if elapsed >= self.after_s or self._bar is not None or self._quarter >= 0:
            if self.mode == "bar":
                self._draw(done, elapsed)
            elif (quarter := 4 * done // self.total) > self._quarter:
                self._quarter = quarter
                eta = elapsed / max(done, 1) * (self.total - done)
                log.info(f"    {self.desc}: {done}/{self.total} ({elapsed:.1f}s, eta {eta:.1f}s)")
        if done >= self.total:
            self.close()

    def _draw(self, done: int, elapsed: float) -> None:
        if self._bar is None:

            self._bar = tqdm(total=self.total, desc=self.desc, file=self.stream, leave=False, dynamic_ncols=True,
                             disable=False)
            self._bar.start_t -= elapsed  # the loop began before the bar appeared: its elapsed and rate say so
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """End the loop: the bar shows its last state, then is erased; a loop stopped early is closed too."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
