"""Results cached by content: the key hashes the metric, its config, the evaluation tokens and the
checkpoints' content hashes (model_sha256 of each checkpoint), never paths or times.

So a re-run with nothing changed loads every result, a changed metric option recomputes only that
metric, and a re-trained checkpoint (new content) is recomputed even at the same path.

Layout, inside the run directory the subject belongs to:

    runs/<run-id>/analysis/<metric>/<key>.json   scalars, info, subject, skipped reason (written last)
                                   /<key>.npz    arrays (curves, spectra, per-layer values)

or, given a cache folder (`analyze --cache-dir DIR`, for run folders that are read-only or shared), under
DIR/<run-id>/<metric>/ with the same keys: the run folder is then only read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_json_atomic
from ..errors import LensError
from ..locks import FileLock
from .base import Result

ANALYSIS_DIR = "analysis"


def content_key(parts: Any) -> str:
    """sha256 of the canonical JSON of `parts` (sorted keys), shortened to 24 hex digits."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ResultStore:
    """Cached Results of one run directory (in it, or under `cache_dir`/<run-id> when given)."""

    def __init__(self, run_dir: Path, cache_dir: str | Path | None = None) -> None:
        self.root = Path(cache_dir) / Path(run_dir).resolve().name if cache_dir else Path(run_dir) / ANALYSIS_DIR

    def _paths(self, metric: str, key: str) -> tuple[Path, Path]:
        base = self.root / metric / key
        return base.with_suffix(".json"), base.with_suffix(".npz")

    def get(self, metric: str, key: str) -> Result | None:
        meta_path, arr_path = self._paths(metric, key)
        if not meta_path.is_file():
            return None
        try:
            d = json.loads(meta_path.read_text())
            arrays: dict[str, np.ndarray] = {}
            if d.get("has_arrays"):
                with np.load(arr_path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, json.JSONDecodeError, zipfile.BadZipFile):
            return None  # unreadable entry: recompute (it is rewritten atomically)
        return Result(metric=d["metric"], subject=d["subject"], scalars=d["scalars"], arrays=arrays,
                      info=d["info"], skipped=d.get("skipped", ""))

    def lock(self, metric: str, key: str, what: str) -> FileLock | contextlib.nullcontext:
        """Held while this process computes the result `key`: a second process asking for it waits, then
        reads it from the cache instead of computing it again. Where no lock file can be made (a read-only
        cache) there is nothing to share: compute, and let put() say what is wrong."""
        try:
            return FileLock(self.root / metric / f"{key}.lock", wait=True, what=what)
        except OSError:
            return contextlib.nullcontext()

    def put(self, key: str, result: Result) -> Path:
        meta_path, arr_path = self._paths(result.metric, key)
        try:
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            if result.arrays:
                with atomic_path(arr_path) as tmp, open(tmp, "wb") as f:
                    np.savez(f, **result.arrays)
            # The JSON goes last: its presence marks a complete entry.
            write_json_atomic(meta_path, {"metric": result.metric, "key": key, "subject": result.subject,
                                          "scalars": result.scalars, "info": result.info,
                                          "skipped": result.skipped, "has_arrays": bool(result.arrays)})
        except OSError as e:  # read-only or foreign run folder (a full disk is atomic.py's LensError already)
            raise LensError(f"cannot write the result cache under {self.root} ({e.strerror or e}); pass "
                            f"--cache-dir DIR to keep it elsewhere (the run folders are then only read)") from None
        return meta_path

    def complete_pieces(self, metric: str, key: str) -> list[Result] | None:
        """The pieces `<key>-<i>of<n>` (plan.piece_key) of one split n that are all there, in order, or None."""
        found: dict[int, set[int]] = defaultdict(set)
        for path in (self.root / metric).glob(f"{key}-*of*.json"):
            m = re.fullmatch(rf"{re.escape(key)}-(\d+)of(\d+)", path.stem)
            if m:
                found[int(m[2])].add(int(m[1]))
        for n, have in sorted(found.items()):
            if have == set(range(1, n + 1)):
                pieces = [self.get(metric, f"{key}-{i}of{n}") for i in range(1, n + 1)]
                if all(p is not None for p in pieces):
                    return pieces  # type: ignore[return-value]
        return None

    def remove(self, metric: str, key: str) -> None:
        """Drop one entry (its JSON first: without it the entry is absent)."""
        meta, arrays = self._paths(metric, key)
        meta.unlink(missing_ok=True)
        arrays.unlink(missing_ok=True)

    def remove_pieces(self, metric: str, key: str) -> None:
        """Drop every piece `<key>-<i>of<n>` of an entry (once they are combined into it)."""
        for meta in (self.root / metric).glob(f"{key}-*of*.json"):
            self.remove(metric, meta.stem)
