"""The ladder: three model sizes trained to the same 20 tokens per parameter on a 2-core CPU, every method's
learning rate tuned per size, the study's six methods x 3 seeds, every metric. One study per size (presets
`ladder-xs`, `ladder-s`, `ladder-m`: a study's scales are the named presets, and the three sizes are one
preset, `micro`, reshaped), so each size has its own statistics, claims check and report. Its one run is
published in docs/results.md (reproduce: scripts/ladder.sh).

The protocol, fixed before the run (docs/results.md repeats it):
- sizes: hidden 24 / 32 / 48 with 2 / 3 / 4 layers (LLaMA blocks, SwiGLU width ~8/3 hidden rounded to 8,
  head dimension 12 / 16 / 16), a 512-token BPE trained on the embedded corpus (Python's documentation),
  rows of 64 packed tokens, batch 16 rows: 38.5K / 70.6K / 160.2K parameters (embeddings and head counted);
- length: 20 tokens per parameter (the compute-optimal ratio), i.e. 752 / 1379 / 3129 steps of 1024
  tokens, 10% warmup, cosine to 10%, fp32; rank-based methods at rank hidden/4 (6 / 8 / 12), as the demo;
- tuning: each (size, method)'s optim.lr from the preset's lr x 1/4 ... 4 (5 points, a factor 2 apart) and
  up to 4 more points a factor 2 further while the best lr is at an end (tune_extend), by the lowest final
  validation loss of proxy runs one quarter as long (seed 1000, no study seed);
- metrics at the demo's settings (presets.DEMO_METRICS, 32 validation sequences), over every checkpoint
  (step 0 and 4 more); downstream: the embedded smoke task, as the demo.
"""

from __future__ import annotations

import os

from .presets import CPU_TUNE_EXTEND, CPU_TUNE_GRID, DEMO_METRICS, PAPER_METHODS
from .spec import StudySpec

TOKENS_PER_PARAMETER = 20
ROW_TOKENS, BATCH_ROWS = 64, 16

# name -> (hidden, intermediate, layers, heads); every size uses the `micro` recipe with these overrides.
LADDER_SIZES = {"xs": (24, 64, 2, 2), "s": (32, 88, 3, 2), "m": (48, 128, 4, 3)}
VOCAB = 512


def parameters(hidden: int, intermediate: int, layers: int) -> int:
    """Parameters of a LLaMA model of this shape with an untied head: embeddings, head, attention, SwiGLU and
    the RMSNorm weights (the count training reports as params_total)."""
    block = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    return 2 * VOCAB * hidden + layers * block + hidden


def size_overrides(hidden: int, intermediate: int, layers: int, heads: int) -> list[str]:
    steps = round(TOKENS_PER_PARAMETER * parameters(hidden, intermediate, layers) / (ROW_TOKENS * BATCH_ROWS))
    return [f"model.hidden_size={hidden}", f"model.intermediate_size={intermediate}", f"model.num_layers={layers}",
            f"model.num_heads={heads}", f"train.steps={steps}", f"optim.warmup_steps={steps // 10}"]


def ladder(size: str) -> StudySpec:
    """The ladder's study at one size (a key of LADDER_SIZES)."""
    hidden, intermediate, layers, heads = LADDER_SIZES[size]
    common = [f"model.vocab_size={VOCAB}", f"data.seq_len={ROW_TOKENS}", "data.val_tokens=8192",
              f"train.total_batch_size={BATCH_ROWS}", f"train.micro_batch_size={BATCH_ROWS}",
              "train.checkpoints=4", "train.eval_every=0", "train.log_every=100"]
    n = parameters(hidden, intermediate, layers)
    return StudySpec(
        name=f"ladder-{size}", methods=list(PAPER_METHODS), scales=["micro"], seeds=[0, 1, 2],
        overrides=common + size_overrides(hidden, intermediate, layers, heads),
        metric_overrides=list(DEMO_METRICS), analysis_steps="all", sequences=32, eval_batch_size=32,
        downstream_tasks=["lens_mc"], downstream_seeds=[0], jobs=max(1, os.cpu_count() or 1),
        tune=True, tune_grid=list(CPU_TUNE_GRID), tune_extend=CPU_TUNE_EXTEND, tune_fraction=0.25,
        notes=[f"CPU ladder, size {size}: hidden {hidden}, {layers} layers, vocab {VOCAB}, {n / 1e3:.1f}K parameters "
               f"trained on {TOKENS_PER_PARAMETER} tokens per parameter; lr tuned per method (preset lr x 1/4 ... 4 "
               f"and up to {CPU_TUNE_EXTEND} points past an edge, proxies a quarter as long, seed 1000); low-rank "
               f"methods at rank hidden/4. docs/results.md."])


def ladder_presets() -> dict[str, object]:
    return {f"ladder-{size}": (lambda size=size: ladder(size)) for size in LADDER_SIZES}
