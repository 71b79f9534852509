"""Memory per rank under FSDP2 (train.parallel=fsdp): measured on gloo processes, against the closed form / W.

For every registered method this trains the `micro` preset for 2 steps in fp32 on W gloo processes with
`train.parallel=fsdp` (torchrun, CPU) and reads what rank 0 recorded in the checkpoint's meta.json
(`train.memory.measure_memory`: the bytes of the parameter, gradient and optimizer-state shards that rank
holds). The closed form per rank is the method plugin's own footprint (Method.footprint) with every sharded
tensor divided by W: parameters, gradients and the optimizer state, except the state FSDP2 does not shard
(torch AdamW's 1-element `step` per tensor, and the groups an optimizer keeps whole on every rank,
`Footprint.replicated_state`: GaLore's and Fira's projected moments and basis). Rank 0 holds ceil(d/W)
rows of a tensor of d rows, so it may hold a little more than 1/W where a dimension is not divisible by W
(no micro dimension is odd). Then the same closed form at the study's scales for 8 ranks, in the reference
recipe's pure bf16.

    python benchmarks/bench_fsdp_memory.py              # writes the FSDP section of docs/memory.md
    python benchmarks/bench_fsdp_memory.py --no-write   # print only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowrank_lens.atomic import write_text_atomic
from lowrank_lens.methods import get_method, method_names
from lowrank_lens.presets import build_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "memory.md"
BEGIN, END = "<!-- fsdp -->", "<!-- /fsdp -->"
MIB = 2**20
SCALES = ("60m", "130m", "350m", "1b")


def per_rank(cfg, world: int) -> dict[str, float]:
    """Closed-form bytes per rank of parameters, gradients and optimizer state under FSDP2 on `world` ranks."""
    fp = get_method(cfg.method).footprint(cfg)
    size = 2 if cfg.train.precision == "bf16-pure" else 4
    state = 0.0
    for i, group in enumerate(fp.state):
        for key, n in group.items():
            if key == "step":
                state += 4 * n  # a 1-element fp32 tensor per parameter, on every rank
            elif i in fp.replicated_state:
                state += size * n
            else:
                state += size * n / world
    return {"params": size * (sum(fp.trainable) + sum(fp.frozen)) / world, "grads": size * sum(fp.trainable) / world,
            "state": state}


def measure(method: str, world: int, out: Path) -> dict:
    """Rank 0's recorded memory after 2 FSDP2 steps of `micro` in fp32 on `world` gloo processes."""
    # Each rank takes an equal part of the batch in one micro-batch (micro's batch is one micro-batch).
    micro = build_config("micro", method).train.total_batch_size // world
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
           "-m", "lowrank_lens", "train", "--preset", "micro", "--method", method, "--device", "cpu",
           "--steps", "2", "--out", str(out), "--set", "train.checkpoints=1", "--set", "train.eval_every=0",
           "--set", "train.precision=fp32", "--set", "train.parallel=fsdp",
           "--set", f"train.micro_batch_size={micro}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{method}: training failed:\n{res.stderr[-2000:]}")
    meta = json.loads((out / f"micro-{method}-seed0" / "ckpt" / "step_000002" / "meta.json").read_text())
    return meta["memory"]


def measured_table(world: int, tmp: Path) -> list[str]:
    lines = [f"| method | params / rank (KiB) | closed / {world} | grads / rank (KiB) | closed / {world} | "
             f"optimizer state / rank (KiB) | closed form | all three: measured / closed |", "|---|" + "---|" * 7]
    for m in method_names():
        mem = measure(m, world, tmp / m)
        closed = per_rank(build_config("micro", m, ["train.precision=fp32"]), world)
        got = {"params": mem["param_bytes"], "grads": mem["grad_bytes"], "state": mem["optimizer_state_bytes"]}
        ratio = sum(got.values()) / sum(closed.values())
        cells = " | ".join(f"{got[k] / 1024:,.1f} | {closed[k] / 1024:,.1f}" for k in ("params", "grads", "state"))
        lines.append(f"| {m} | {cells} | {ratio:.4f} |")
        print(lines[-1], flush=True)
    return lines


def scale_table(world: int) -> list[str]:
    lines = ["| method | " + " | ".join(f"{s}: one process / per rank of {world} (MiB)" for s in SCALES) + " |",
             "|---|" + "---|" * len(SCALES)]
    for m in method_names():
        cells = []
        for s in SCALES:
            cfg = build_config(s, m, [])
            one, sharded = per_rank(cfg, 1), per_rank(cfg, world)
            cells.append(f"{sum(one.values()) / MIB:,.0f} / {sum(sharded.values()) / MIB:,.0f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def section(world: int, measured: list[str], secs: float) -> str:
    return "\n".join([
        BEGIN, "## Per rank under FSDP2 (`train.parallel=fsdp`)", "",
        f"Written by `python benchmarks/bench_fsdp_memory.py` ({time.strftime('%Y-%m-%d')}; {platform.machine()}; "
        f"torch {torch.__version__}; {world} gloo processes on CPU; {secs:.0f} s). FSDP2 shards every parameter, "
        "its gradient and its AdamW moments by rows over the ranks; what is not sharded is torch AdamW's "
        "1-element `step` per tensor and the state an optimizer keeps whole on every rank "
        "(`Footprint.replicated_state`: GaLore's and Fira's projected moments and basis, which the projection "
        "computes from the gathered full gradient of one matrix at a time). The closed form per rank is the "
        "plugin's footprint with the sharded tensors divided by the world size.", "",
        "Measured: rank 0 after 2 steps of `micro` in fp32 (from the checkpoint's `meta.json`).", "",
        *measured, "",
        "Closed form at the study's scales, bf16 (the reference recipe), parameters + gradients + optimizer "
        "state, one process vs each of 8 ranks (activations and the transient full gradient of GaLore's "
        "projection are not counted):", "",
        *scale_table(8), END])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help=f"print only, do not write {DOC}")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measured = measured_table(args.world, Path(tmp))
    text = section(args.world, measured, time.perf_counter() - t0)
    print(text)
    if args.no_write:
        return
    doc = DOC.read_text()
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    write_text_atomic(DOC, doc)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
