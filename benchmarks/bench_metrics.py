"""Cost of each metric per checkpoint (or per pair / run), measured at reduced settings and scaled to the
study's protocol (docs/study.md §2: 1000 sequences of 256 tokens, D = 100 directions x 25 points, ...).

For each model shape a throwaway full-rank run is trained for 2 steps on the embedded corpus (the shape is
all that matters for cost), then every metric is computed through its plugin with small settings and timed.
The study-protocol cost is the measured time x (the protocol's units of work / the measured units), where a
unit is one evaluation of L(theta) on the token set (landscape, interpolation), one Hessian-vector product
(curvature) or one forward pair (activations), and x (1000 / measured sequences). That linear scaling is
an extrapolation and is labelled as one; spectra are measured as they are (they read weights only).

    python benchmarks/bench_metrics.py                   # micro shape
    python benchmarks/bench_metrics.py --shape 60m --seqs 2 --seq-len 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lowrank_lens.analysis.context import EvalSettings
from lowrank_lens.analysis.runner import analyze
from lowrank_lens.presets import build_config
from lowrank_lens.train import train

# metric -> (reduced options, units of work at those options, units under the study's protocol)
PLAN: dict[str, tuple[list[str], int, int]] = {
    "landscape_random": (["directions=2", "points=5"], 2 * 4 + 1, 100 * 24 + 1),
    "landscape_pca": (["k=2", "points=5", "ks=1,2"], 2 * 4 + 1, 10 * 24 + 1),
    "trajectory_pca": (["components=2", "points=5"], 2 * 4 + 1, 2 * 24 + 1),
    "interpolation": (["points=5"], 5, 21),
    "imib": (["points=5"], 5, 21),
    "curvature": (["lanczos_iters=4", "hutchinson_probes=4"], 8, 20 + 30),
    "activation_similarity": ([], 1, 1),
    "spectra": ([], 1, 1),
    "update_spectra": ([], 1, 1),
}
WEIGHT_ONLY = ("spectra", "update_spectra")
PROTOCOL_SEQS = 1000


def shape_overrides(shape: str, seq_len: int) -> list[str]:
    base = ["train.steps=4", "train.checkpoints=4", "train.eval_every=0", "train.total_batch_size=2",
            "train.micro_batch_size=2", f"data.seq_len={seq_len}", f"data.val_tokens={seq_len * 64}"]
    if shape == "micro":
        return base
    # A reference shape on the embedded corpus with a trained BPE of the shape's vocabulary, fp32 on CPU.
    return base + ["data.source=embedded", "data.tokenizer=bpe", "data.mode=packed", "train.precision=fp32",
                   "train.device=cpu", "optim.warmup_steps=0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="micro")
    ap.add_argument("--seqs", type=int, default=8, help="evaluation sequences actually used")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--metrics", default=",".join(PLAN))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    t0 = time.perf_counter()
    runs = [train(build_config(args.shape, m, shape_overrides(args.shape, args.seq_len)), work / "runs")
            for m in ("full-rank", "galore")]
    print(f"setup (2 runs of 4 steps at {args.shape}): {time.perf_counter() - t0:.1f}s")
    settings = EvalSettings(sequences=args.seqs, batch_size=args.seqs)
    load = os.getloadavg()[0]
    rows = []
    for name in args.metrics.split(","):
        opts, units, protocol_units = PLAN[name]
        out = analyze(runs, [name], None, None, [f"{name}.{o}" for o in opts], settings, work / "analysis",
                      plots=False)[name]
        done = [r for r in out.results if not r.skipped]
        per_subject = sum(r.info["seconds"] for r in done) / max(len(done), 1)
        scale = 1.0 if name in WEIGHT_ONLY else (protocol_units / units) * (PROTOCOL_SEQS / args.seqs)
        rows.append({"metric": name, "subject": out.metric.subject_kind, "measured_s": per_subject,
                     "measured_at": f"{' '.join(opts) or 'defaults'}, {args.seqs} seqs x {args.seq_len}",
                     "protocol_s_extrapolated": per_subject * scale})
    print(f"\n{args.shape} shape, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print("| metric | per | measured (s) | measured at | study protocol (s, extrapolated) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {r['subject']} | {r['measured_s']:.2f} | {r['measured_at']} | "
              f"{r['protocol_s_extrapolated']:.0f} |")
    (work / "bench_metrics.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
