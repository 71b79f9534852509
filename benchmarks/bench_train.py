"""Training throughput and loop overhead at a preset (default: micro, full-rank, fp32 on CPU).

Measures, in one process so the ratios compare like with like:
  1. the machine's fp32 GEMM FLOP/s (square matmuls, best of several sizes),
  2. the real training loop (data, logging, validation and checkpoint scheduling included, no checkpoint
     or validation actually due in the timed window) -> tokens/s and model FLOP/s = 6 * params * tokens/s,
  3. a bare loop over the same model and the same batches (forward, backward, step only)
     -> loop overhead = 1 - bare_time / loop_time.

    python benchmarks/bench_train.py [--preset micro] [--method full-rank] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lowrank_lens.data import build_data, to_model_inputs
from lowrank_lens.distributed import DistEnv
from lowrank_lens.evaluation import token_nll
from lowrank_lens.presets import build_config
from lowrank_lens.train.logs import RunLogger
from lowrank_lens.train.loop import Trainer
from lowrank_lens.train.run import build_components


def gemm_flops(device: torch.device) -> float:
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for _ in range(3):
            a @ b
        reps = max(3, int(2e10 / (2 * n**3)))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def build(preset: str, method_name: str, steps: int, tmp: Path):
    cfg = build_config(preset, method_name, [f"train.steps={steps}", "train.eval_every=0",
                                             "train.checkpoints=1", f"train.log_every={steps}"])
    env = DistEnv(device=torch.device("cpu"))
    data = build_data(cfg.data, cfg.model.vocab_size)
    model, method, opt = build_components(cfg, env.device)
    trainer = Trainer(cfg=cfg, run_dir=tmp, env=env, method=method, model=model, optimizer=opt, data=data,
                      logger=RunLogger(tmp, enabled=True), ckpt_steps=[0, steps + 1])
    return cfg, trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--method", default="full-rank")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    flops = gemm_flops(torch.device("cpu"))

    with tempfile.TemporaryDirectory() as tmp:
        total = args.warmup + args.steps
        cfg, trainer = build(args.preset, args.method, total, Path(tmp))
        params = sum(p.numel() for p in trainer.model.parameters())
        tokens_per_step = cfg.train.total_batch_size * cfg.data.seq_len  # positions
        for _ in range(args.warmup):
            trainer.train_step()
        t0 = time.perf_counter()
        trainer.cfg.train.steps = total
        trainer.fit()  # the real loop: data, logging, schedule checks
        loop_s = (time.perf_counter() - t0) / args.steps

        # Bare loop: same model, same batches prepared up front, no data pipeline, logging or checks.
        batches = [to_model_inputs(trainer.data.train.rows(s, cfg.train.total_batch_size), trainer.data.pad_id)
                   for s in range(args.steps)]
        model, opt = trainer.model, trainer.optimizer
        t0 = time.perf_counter()
        for ids, labels in batches:
            nll, n = token_nll(model, ids, labels)
            (nll / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        bare_s = (time.perf_counter() - t0) / args.steps

    tps = tokens_per_step / loop_s
    model_flops = 6 * params * tps
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | method | params | GEMM GFLOP/s | tokens/s | model GFLOP/s | % of GEMM | step (loop) | "
          "step (bare) | loop overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {args.method} | {params / 1e6:.2f}M | {flops / 1e9:.1f} | {tps:,.0f} | "
          f"{model_flops / 1e9:.1f} | {100 * model_flops / flops:.0f}% | {loop_s * 1e3:.1f} ms | "
          f"{bare_s * 1e3:.1f} ms | {100 * max(0.0, 1 - bare_s / loop_s):.1f}% |")


if __name__ == "__main__":
    main()
