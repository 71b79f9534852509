"""Cache plumbing shared by the data pipeline: where caches live, stable hashes, atomic writes.

Every cached artefact (embedded corpus, trained tokenizer, token rows) is written to a temporary file in
the destination folder and then `os.replace`d into place, so a reader never sees a half-written file and
two processes building the same artefact at once both end with the same complete file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..atomic import atomic_path, write_json_atomic  # noqa: F401  (re-exported for data/)
from ..config import DataConfig, stable_hash  # noqa: F401  (stable_hash re-exported for data/)

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
