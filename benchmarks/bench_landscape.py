"""Landscape points per second: the study's engine vs ours, on the same model, tokens and directions.

- reference: the study's way (`losses_along_directions_reference`): write p0 + alpha d into the live
  parameters in place, evaluate, one point at a time, restore at the end.
- loop: ours, one functional call per point (nothing mutated), alpha = 0 evaluated once for all directions.
- vmap-C: ours, torch.func.vmap over the points of one direction in chunks of C perturbed models.
- compiled: ours, 'loop' through torch.compile; its one-off compile time is reported separately.

Points/s counts the D x G requested points for every engine (the alpha = 0 dedup is part of the gain).
Engines alternate within each repeat so load from other processes on a shared machine hits all alike;
the median over repeats is reported, with the load average before and after. Results must agree.

    python benchmarks/bench_landscape.py                       # hidden 128, 4 layers, vocab 4096
    python benchmarks/bench_landscape.py --hidden 256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from lowrank_lens.analysis.maths import losses_along_directions, losses_along_directions_reference, random_directions
from lowrank_lens.config import ModelConfig
from lowrank_lens.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--dirs", type=int, default=4)
    ap.add_argument("--alphas", type=int, default=9, help="odd: a grid centred on 0 like the study's")
    ap.add_argument("--chunks", default="4,8", help="vmap chunk sizes to try")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile engine")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    inter = (int(args.hidden * 8 / 3) + 7) // 8 * 8
    cfg = ModelConfig(hidden_size=args.hidden, intermediate_size=inter, num_layers=args.layers,
                      num_heads=max(1, args.hidden // 64), vocab_size=args.vocab, max_seq_len=args.seq_len)
    model = build_model(cfg, seed=0, device=args.device).eval()
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, args.vocab, (args.seqs, args.seq_len), generator=g).to(args.device)]
    params0 = {n: p.detach() for n, p in model.named_parameters()}
    dirs = random_directions(params0, args.dirs, seed=0)  # the study's unnormalised Gaussian directions
    alphas = torch.from_numpy(np.linspace(-0.003, 0.003, args.alphas))  # the study's range, centred
    n_points = args.dirs * args.alphas

    engines = {"reference": lambda: losses_along_directions_reference(model, params0, dirs, alphas, tokens),
               "loop": lambda: losses_along_directions(model, params0, dirs, alphas, tokens, method="loop")}
    for c in (int(x) for x in args.chunks.split(",")):
        engines[f"vmap-{c}"] = lambda c=c: losses_along_directions(model, params0, dirs, alphas, tokens,
                                                                    method="vmap", chunk_size=c)
    if not args.no_compile:
        engines["compiled"] = lambda: losses_along_directions(model, params0, dirs, alphas, tokens, method="compiled")

    load0 = os.getloadavg()
    results, first = {}, {}
    for name, fn in engines.items():  # warm-up (and compilation), and the values to compare
        t0 = time.perf_counter()
        results[name] = fn()
        first[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    load1 = os.getloadavg()

    n_params = sum(p.numel() for p in params0.values())
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, {n_params / 1e6:.2f}M params; "
          f"tokens {args.seqs} x {args.seq_len}; {args.dirs} directions x {args.alphas} alphas = {n_points} points")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}; load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    ref = results["reference"]
    base = statistics.median(times["reference"])
    rows = []
    print(f"{'engine':<10} {'median s':>9} {'points/s':>9} {'vs ref':>7} {'max |dL|':>10} {'1st call s':>11}")
    for name in engines:
        med = statistics.median(times[name])
        diff = float((results[name] - ref).abs().max())
        rows.append({"engine": name, "median_s": med, "points_per_s": n_points / med, "speedup": base / med,
                     "max_abs_diff": diff, "times_s": times[name], "first_call_s": first[name]})
        print(f"{name:<10} {med:>9.3f} {n_points / med:>9.2f} {base / med:>6.2f}x {diff:>10.2e} {first[name]:>11.1f}")
        assert torch.allclose(results[name], ref, rtol=1e-5, atol=1e-5), f"{name} disagrees with the reference"
    print(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "load": [load0, load1], "rows": rows}))


if __name__ == "__main__":
    main()
