"""What every metric computation shares: the evaluation tokens, the device and dtype, loaded models, and
progress output. Metrics receive a Context and never read run directories themselves.

Evaluation tokens are the run's fixed validation rows (`val_tokens.npy`, the same set training validated
on) or a given token file, cut to the first `sequences` rows (the study uses 1000 sequences of C4
validation; docs/study.md §2 "Shared evaluation protocol"). They are moved to the device once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.cache import load_token_rows
from ..data.rows import to_model_inputs
from ..errors import LensError
from ..progress import Progress
from ..runfolder.loading import LoadedCheckpoint, dense_model, load_checkpoint, parse_device
from .maths.loss import prepare_batches
from .subjects import CheckpointRef, RunRef

log = logging.getLogger("lowrank_lens")

PROGRESS_AFTER_S = 5.0
"""Loops shorter than this show no progress (no bar, no line)."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
VAL_TOKENS_FIX = ("training writes it once from the data cache: restore it, or evaluate on other rows with "
                  "--token-file FILE.npy")
TOKEN_FILE_FIX = "pass an .npy of int token rows [N, T] (-1 = masked) made with the run's tokenizer (np.save)"


@dataclass
class EvalSettings:
    """How checkpoints are evaluated (shared by all metrics; part of every token-reading metric's key)."""

    sequences: int = 1000
    """Validation sequences used (study: 1000); fewer if the token set is smaller."""
    batch_size: int = 32
    token_file: str = ""
    """An .npy of int [N, T] token rows (-1 = masked) to evaluate on instead of the run's val_tokens.npy."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    dtype: str = "auto"
    """auto = fp32 on every device; fp32, bf16, fp64. The study evaluated in bf16 on GPU, which moved ES_rand
    by +28% against fp32 on the same checkpoint and directions (the team's audit, issue 12): bf16 stays an
    explicit choice."""

    def __post_init__(self) -> None:
        if self.sequences < 1 or self.batch_size < 1:
            raise LensError(f"analysis sequences ({self.sequences}) and batch size ({self.batch_size}) must be >= 1")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise LensError(f"unknown analysis dtype {self.dtype!r}; choose auto, {', '.join(DTYPES)}")


class Context:
    def __init__(self, settings: EvalSettings | None = None, max_loaded: int = 4) -> None:
        self.settings = s = settings or EvalSettings()
        self.device = parse_device(s.device)
        # fp32 whatever the device: the landscape metrics are differences of nearby losses, which bf16's
        # 8-bit mantissa distorts. TF32 matmuls are not enabled either (torch's default; unmeasured here).
        self.dtype = torch.float32 if s.dtype == "auto" else DTYPES[s.dtype]
        self._loaded: OrderedDict[tuple[str, ...], object] = OrderedDict()
        self._max_loaded = max_loaded
        self._rows: dict[tuple[str, int], np.ndarray] = {}
        self._batches: dict[str, list[dict[str, torch.Tensor]]] = {}
        self._progress: Progress | None = None

    # ---- evaluation tokens ---------------------------------------------------------------------
    def rows(self, run: RunRef) -> np.ndarray:
        """int32 [N, T] rows (-1 = masked), N = min(sequences, available)."""
        if self.settings.token_file:
            path, fix = Path(self.settings.token_file), TOKEN_FILE_FIX
        else:
            path, fix = run.run_dir / "val_tokens.npy", VAL_TOKENS_FIX
        key = (str(path), run.vocab_size)
        if key not in self._rows:
            rows = load_token_rows(path, run.vocab_size or None, fix=fix)
            if len(rows) == 0:
                raise LensError(f"{path} holds no token rows; {fix}")
            self._rows[key] = np.ascontiguousarray(rows[: self.settings.sequences])
        return self._rows[key]

    def missing_rows(self, run: RunRef) -> str:
        """Why `run` has no evaluation rows to read ('' when it has them): an import of a checkpoint without a
        tokenizer keeps no val_tokens.npy, and the metrics that evaluate say what to pass instead."""
        if self.settings.token_file or run.data.get("rows") != 0 or (run.run_dir / "val_tokens.npy").exists():
            return ""
        return "no evaluation rows: imported without a tokenizer; pass --token-file ROWS.npy"

    def token_key(self, run: RunRef) -> str:
        """Content hash of the evaluation rows and how they are batched and scored."""
        rows = self.rows(run)
        h = hashlib.sha256(rows.tobytes())
        h.update(f"{rows.shape}|{self.pad_id(run)}|{self.settings.batch_size}|{self.dtype}".encode())
        return h.hexdigest()[:24]

    def pad_id(self, run: RunRef) -> int:
        return int(run.data.get("pad_id") or 0)

    def batches(self, run: RunRef) -> list[dict[str, torch.Tensor]]:
        """The evaluation rows as prepared batches on the device ({'input_ids', 'labels'}, -100 = masked)."""

        key = self.token_key(run)
        if key not in self._batches:
            rows, bs = self.rows(run), self.settings.batch_size
            raw = [to_model_inputs(rows[i:i + bs], self.pad_id(run)) for i in range(0, len(rows), bs)]
            self._batches[key] = prepare_batches(raw, self.device)
        return self._batches[key]

    # ---- models --------------------------------------------------------------------------------
    def load(self, ckpt: CheckpointRef, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> LoadedCheckpoint:
        """The checkpoint in its trained parameterization (kept in a small LRU; never mutate it).

        `dtype` overrides the evaluation dtype (weight-only metrics read fp32 whatever the device); `device`
        the evaluation device (trajectory_pca keeps a run's checkpoints in host memory, not on the GPU)."""
        dtype = dtype or self.dtype
        device = torch.device(device) if device is not None else self.device
        return self._cached((str(ckpt.path), "native", str(dtype), str(device)),
                            lambda: load_checkpoint(ckpt.path, device, dtype))

    def dense(self, ckpt: CheckpointRef, dtype: torch.dtype | None = None) -> torch.nn.Module | None:
        """A plain LLaMA with the checkpoint's effective weights, or None when no dense view exists."""
        dtype = dtype or self.dtype
        return self._cached((str(ckpt.path), "dense", str(dtype)), lambda: dense_model(self.load(ckpt, dtype)))

    def _cached(self, key: tuple[str, ...], make):
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        value = make()
        self._loaded[key] = value
        while len(self._loaded) > self._max_loaded:
            self._loaded.popitem(last=False)
        return value

    # ---- progress ------------------------------------------------------------------------------
    def progress(self, desc: str, done: int, total: int, start: float) -> None:
        """`done` of the `total` items of the loop `desc` that began at `start` (time.perf_counter()) are done.

        Quick loops (under PROGRESS_AFTER_S) stay silent; a longer one draws a bar on a terminal and logs at
        most progress.MAX_LINES lines elsewhere, whatever its length (progress.py), so a study's log shows
        progress, not a line per Hessian-vector product. A call for another loop, reaching `total`, or
        end_progress() ends the current one."""
        p = self._progress
        if p is None or p.closed or (p.desc, p.total, p.start) != (desc, max(0, total), start):
            self.end_progress()
            p = self._progress = Progress(desc, total, start=start, after_s=PROGRESS_AFTER_S)
        p.update(done)

    def end_progress(self) -> None:
        """Close the current loop's progress (its bar), e.g. a loop that stopped before its total."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None
