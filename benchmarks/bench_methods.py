"""Per-method step time relative to full-rank, and measured memory (parameters, gradients, optimizer state).

Memory is measured from the actual tensors after the first optimizer step (train/memory.py), in the
preset's precision (fp32 here, so bytes = 4 x elements). Step time is the median of timed updates of the
real loop's `train_step` on the preset's batches (SVD refreshes of GaLore/Fira included at their period).

    python benchmarks/bench_methods.py --preset micro --steps 20
    python benchmarks/bench_methods.py --preset 60m --steps 1 --batch 2     # one step at 60m shapes, CPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lowrank_lens.data import build_data
from lowrank_lens.distributed import DistEnv
from lowrank_lens.methods import method_names
from lowrank_lens.presets import build_config
from lowrank_lens.train.logs import RunLogger
from lowrank_lens.train.loop import Trainer
from lowrank_lens.train.run import build_components

OFFLINE_DATA = ["data.source=embedded", "data.tokenizer=bpe", "data.mode=packed", "data.val_tokens=4096"]


def measure(preset: str, method: str, steps: int, batch: int | None, tmp: Path) -> tuple[float, dict]:
    sets = ["train.precision=fp32", "train.eval_every=0", "train.checkpoints=1", "train.log_every=1000000"]
    if preset not in ("nano", "micro"):
        # Big shapes on CPU: the embedded corpus stands in for C4; its BPE fills the 32000-row vocabulary.
        sets += OFFLINE_DATA
    if batch:
        sets += [f"train.total_batch_size={batch}", f"train.micro_batch_size={batch}"]
    cfg = build_config(preset, method, sets)
    data = build_data(cfg.data, cfg.model.vocab_size, log=lambda s: None)
    model, m, opt = build_components(cfg, torch.device("cpu"))
    trainer = Trainer(cfg=cfg, run_dir=tmp, env=DistEnv(), method=m, model=model, optimizer=opt, data=data,
                      logger=RunLogger(tmp, enabled=False), ckpt_steps=[])
    trainer.state.step = 1  # away from lr 0 of the warmup
    trainer.train_step()  # warm-up; creates the optimizer state and measures memory
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), trainer.state.memory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: the preset's)")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in method_names():
            rows[name] = measure(args.preset, name, args.steps, args.batch, Path(tmp))
    base = rows["full-rank"][0]
    mib = 2**20
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"preset {args.preset}, median of {args.steps} steps")
    print("| method | params (total / trainable) | step | vs full-rank | param MiB | grad MiB | optimizer-state MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, (t, mem) in rows.items():
        print(f"| {name} | {mem['params_total'] / 1e6:.2f}M / {mem['params_trainable'] / 1e6:.2f}M | "
              f"{t * 1e3:.0f} ms | {t / base:.2f}x | {mem['param_bytes'] / mib:.2f} | {mem['grad_bytes'] / mib:.2f} | "
              f"{mem['optimizer_state_bytes'] / mib:.2f} |")


if __name__ == "__main__":
    main()
