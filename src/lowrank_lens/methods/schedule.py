"""What a method derives from the step and the run's seed alone: the default lr multiplier (warmup + cosine)
and the seeds of its random draws, so every DDP rank and every resumed run computes the same numbers."""

from __future__ import annotations

import hashlib
import math


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. (seed, step, layer name)), not on process or RNG
    state, so every DDP rank and every resumed run draws the same numbers."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup from 0, then cosine from 1 to min_ratio (the reference `get_scheculer` cosine).

    As in the reference LambdaLR, the first update (step 0) has multiplier 0 when warmup > 0.
    """
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
