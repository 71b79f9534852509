"""Cache plumbing shared by the data pipeline: where caches live, stable hashes, atomic writes.

Every cached artefact (embedded corpus, trained tokenizer, token rows) is written to a temporary file in
the destination folder and then `os.replace`d into place, so a reader never sees a half-written file and
two processes building the same artefact at once both end with the same complete file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..config import DataConfig
from ..errors import LensError
from ..hashing import stable_hash

ENV_CACHE = "LOWRANK_LENS_CACHE"


def default_cache_dir(cfg: DataConfig) -> Path:
    """cfg.cache_dir, else $LOWRANK_LENS_CACHE, else ~/.cache/lowrank_lens."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    return Path.home() / ".cache" / "lowrank_lens"


def file_sha256(path: Path, cache_dir: Path) -> str:
    """Content hash of a file, memoised under the cache keyed by (path, size, mtime).

    Local corpora can be gigabytes; re-hashing them on every run would cost seconds, while the stat
    triple changes whenever the content can have changed.
    """
    st = path.stat()
    memo = cache_dir / "hashes" / f"{stable_hash([str(path.resolve()), st.st_size, st.st_mtime_ns])}.txt"
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with atomic_path(memo) as tmp:
        tmp.write_text(digest)
    return digest


def load_token_rows(path: str | Path, vocab_size: int | None = None, *, mmap: bool = False,
                    fix: str = "") -> np.ndarray:
    """Integer token rows [N, T] (-1 = masked) from an .npy file: the one reader of every token-row file
    (a run's val_tokens.npy, an analysis --token-file, the data cache's rows), so each reports a bad file
    with the same line. Nothing is ever unpickled (allow_pickle=False). `vocab_size` also checks every id is
    in [-1, vocab_size); `mmap` maps the file instead of reading it (and leaves out that O(N T) scan).
    Anything else is a LensError naming the file and ending in `fix`."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise LensError(f"{path} does not exist{tail}")
    try:
        rows = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        detail = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if "pickled" in detail:  # numpy's text would suggest unpickling it, which must never happen
            detail = "not an .npy array; a pickle is never loaded"
        elif "Object arrays" in detail or "Python objects" in detail:
            detail = "an array of Python objects (dtype=object), which is never unpickled"
        raise LensError(f"{path} is not a readable .npy of token rows ({detail[:200]}){tail}") from None
    if not isinstance(rows, np.ndarray):  # an .npz archive
        rows.close()
        raise LensError(f"{path} is an .npz archive, not an .npy array of token rows{tail}")
    check_token_rows(rows, vocab_size, str(path), tail)
    return rows


def check_token_rows(rows: np.ndarray, vocab_size: int | None, where: str, tail: str = "") -> None:
    """Integer rows [N, T] (-1 = masked) with every id in [-1, vocab_size) (unchecked when vocab_size is None);
    a LensError naming `where` otherwise. The one check of token rows from a file or from memory."""
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer) or rows.shape[1] == 0:
        raise LensError(f"{where} must hold integer token rows [N, T] (-1 = masked); it holds {rows.dtype} "
                        f"{list(rows.shape)}{tail}")
    if vocab_size is not None and rows.size:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < -1 or hi >= vocab_size:
            raise LensError(f"{where} holds token ids outside [-1, {vocab_size}) (min {lo}, max {hi}): they are "
                            f"not ids of this model's vocabulary{tail}")
