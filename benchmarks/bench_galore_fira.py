"""Per-step optimizer time: our GaLoreAdamW / FiraAdamW vs the official PyPI optimizers.

Needs the reference packages (dev-only; --no-deps keeps pip from pulling a CUDA torch):

    pip install --no-deps galore-torch==1.0 fira==1.0.2

The parameters are one LLaMA block of the given shape (its 7 target matrices projected, its 2 RMSNorm
weights in the plain group), plus embeddings and LM head of a small vocabulary so that plain AdamW, which
both implementations do identically, does not drown the difference. Gradients are fixed random tensors,
so only `optimizer.step()` is timed. A small T puts SVD refreshes in the measurement; refresh steps and
plain steps are reported separately (medians) and amortised over a cycle of T steps. Ours and the
reference alternate step by step, so load from other processes on a shared machine hits both alike.

    python benchmarks/bench_galore_fira.py                      # 60m block, rank 128, T 5
    python benchmarks/bench_galore_fira.py --shape micro --rank 32
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import statistics
import sys
import time
import types

import torch

from lowrank_lens.optim import FiraAdamW, GaLoreAdamW

# hidden, intermediate (docs/methods.md §1.1 / presets.py)
SHAPES = {"micro": (128, 352), "60m": (512, 1376), "130m": (768, 2048), "350m": (1024, 2736)}


def reference_adamw(package: str, module: str) -> type:
    """The official AdamW, loaded without the package __init__ (galore_torch's imports bitsandbytes)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        sys.exit("reference optimizers missing: pip install --no-deps galore-torch==1.0 fira==1.0.2")
    alias = f"_reference_{package}"
    pkg = types.ModuleType(alias)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault(alias, pkg)
    return importlib.import_module(f"{alias}.{module}").AdamW


def make_params(hidden: int, inter: int, vocab: int, dtype: torch.dtype) -> tuple[list, list]:
    """(plain, projected) parameters of one block: q/k/v/o (h x h), gate/up (f x h), down (h x f)."""
    g = torch.Generator().manual_seed(0)

    def mat(m: int, n: int) -> torch.nn.Parameter:
        return torch.nn.Parameter((0.02 * torch.randn(m, n, generator=g)).to(dtype))

    projected = [mat(hidden, hidden) for _ in range(4)] + [mat(inter, hidden) for _ in range(2)]
    projected.append(mat(hidden, inter))
    plain = [mat(vocab, hidden), mat(vocab, hidden), torch.nn.Parameter(torch.ones(hidden, dtype=dtype)),
             torch.nn.Parameter(torch.ones(hidden, dtype=dtype))]
    return plain, projected


def build(kind: str, impl: str, args: argparse.Namespace) -> tuple[torch.optim.Optimizer, list]:
    hidden, inter = SHAPES[args.shape]
    dtype = getattr(torch, args.dtype)
    plain, projected = make_params(hidden, inter, args.vocab, dtype)
    alpha_key = "alpha" if (kind == "fira" and impl == "reference") else "scale"
    groups = [{"params": plain},
              {"params": projected, "rank": args.rank, "update_proj_gap": args.gap, alpha_key: 0.25,
               "proj_type": "std"}]
    if impl == "ours":
        opt = (GaLoreAdamW if kind == "galore" else FiraAdamW)(groups, lr=1e-2)
    else:
        ref = reference_adamw(*{"galore": ("galore_torch", "adamw"), "fira": ("fira", "fira_adamw")}[kind])
        opt = ref(groups, lr=1e-2, no_deprecation_warning=True)
    return opt, plain + projected


def bench(kind: str, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    runs = {impl: build(kind, impl, args) for impl in ("ours", "reference")}
    g = torch.Generator().manual_seed(1)
    params = runs["ours"][1]
    grads = [[torch.randn(p.shape, generator=g).to(p.dtype) for p in params] for _ in range(args.gap)]
    times: dict[str, dict[str, list[float]]] = {impl: {"svd": [], "plain": []} for impl in runs}
    for step in range(args.steps):
        for impl in (("ours", "reference") if step % 2 == 0 else ("reference", "ours")):
            opt, ps = runs[impl]
            for p, gr in zip(ps, grads[step % args.gap], strict=True):
                p.grad = gr
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if step >= args.gap:  # the first cycle warms up allocators and thread pools
                times[impl]["svd" if step % args.gap == 0 else "plain"].append(dt)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="60m")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--gap", type=int, default=5, help="T; every T-th step recomputes the SVDs")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0 = torch's default); 1 keeps timings stable on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, inter = SHAPES[args.shape]
    print(f"# {args.shape} block (hidden {hidden}, intermediate {inter}), rank {args.rank}, T {args.gap}, "
          f"{args.dtype}, {args.steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'optimizer':<8} {'step':<10} {'ours ms':>9} {'ref ms':>9} {'ours/ref':>9}")
    for kind in ("galore", "fira"):
        t = bench(kind, args)
        med = {impl: {k: 1e3 * statistics.median(v) for k, v in t[impl].items()} for impl in t}
        # Amortised over one cycle of T steps: one refresh step and T - 1 plain steps (medians, so a
        # neighbour's burst on a shared machine does not decide the result).
        for impl in med:
            med[impl]["per step"] = (med[impl]["svd"] + (args.gap - 1) * med[impl]["plain"]) / args.gap
        for label in ("svd", "plain", "per step"):
            o, r = med["ours"][label], med["reference"][label]
            print(f"{kind:<8} {label:<10} {o:>9.2f} {r:>9.2f} {o / r:>9.3f}")

if __name__ == "__main__":
    main()
