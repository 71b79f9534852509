"""The GPU check: what one GPU gives the study, in about 10 minutes, as a markdown table.

    python benchmarks/gpu_check.py --out gpu_check.md        # on a GPU: 60m, 200 steps, bf16
    python benchmarks/gpu_check.py --tiny --out check.md     # anywhere (the default on CPU): nano, fp32, seconds

1. Training: full-rank and GaLore at the 60m shape for 200 steps of the reference recipe's batch (512 x 256
   tokens, micro-batch 128, pure bf16) on the embedded corpus (no hub access needed; the tokens' content does
   not change the speed). Reported: tokens/s over the steps after a warm-up, model FLOP/s = 6 N tokens/s
   (N = all parameters; no attention term, so it slightly undercounts), MFU against the device's dense
   bf16 peak (a table of known devices, or --peak-tflops; on CPU against the measured fp32 GEMM rate), and
   the peak allocated memory against the closed form of parameters + gradients + optimizer state
   (Method.footprint; the difference is activations and workspace).
2. Landscape engines: points/s of the study's in-place way (reference) and ours (loop, vmap, compiled) on
   the trained full-rank model, the same directions and tokens; all must agree.
3. Numerics: the same trained checkpoint and random directions evaluated in fp32, bf16 and (on CUDA) TF32
   matmuls: ES and DV of the 1-D landscape (docs/study.md §2) and the centre loss, relative to fp32.

Targets (issue 13): >= 40% MFU for 60m full-rank; landscape >= 2x the reference engine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowrank_lens.analysis.maths import losses_along_directions, losses_along_directions_reference, random_directions
from lowrank_lens.analysis.maths.landscape import landscape_summary
from lowrank_lens.data import build_data
from lowrank_lens.distributed import DistEnv
from lowrank_lens.methods import get_method
from lowrank_lens.presets import build_config
from lowrank_lens.train.logs import RunLogger
from lowrank_lens.train.loop import Trainer
from lowrank_lens.train.run import build_components

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "RTX 4090": 165.0}
"""Dense bf16 tensor-core peaks (vendor data sheets, no sparsity); the first name found in the device's wins."""
DATA = ["data.source=embedded", "data.tokenizer=bpe", "data.mode=packed"]
MODES = {
    "gpu": {"preset": "60m", "steps": 200, "warmup": 20, "sets": [*DATA, "data.val_tokens=65536"],
            "dirs": 8, "alphas": 9, "seqs": 16, "chunk": 8},
    "tiny": {"preset": "nano", "steps": 12, "warmup": 3, "sets": ["train.precision=fp32"],
             "dirs": 2, "alphas": 5, "seqs": 4, "chunk": 2},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, override: float) -> tuple[float, str]:
    """(FLOP/s the MFU is taken against, where the number comes from)."""
    if override:
        return override * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{key} dense bf16 data sheet"
        return float("nan"), f"unknown device {name!r} (pass --peak-tflops)"
    best = 0.0
    for n in (256, 512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t0 = time.perf_counter()
        reps = max(3, int(2e9 / (2 * n**3)))
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best, "measured fp32 GEMM (CPU)"


def closed_form_bytes(cfg) -> float:
    fp = get_method(cfg.method).footprint(cfg)
    size = 2 if cfg.train.precision == "bf16-pure" else 4
    return size * (2 * sum(fp.trainable) + sum(fp.frozen)) + fp.state_bytes + fp.buffer_bytes


def train_row(mode: dict, method: str, device: torch.device, tmp: Path, peak: float) -> tuple[dict, Trainer]:
    steps, warmup = mode["steps"], mode["warmup"]
    cfg = build_config(mode["preset"], method, [*mode["sets"], f"train.steps={steps + warmup}",
                                                "train.eval_every=0", "train.checkpoints=1",
                                                f"train.log_every={steps + warmup}", f"train.device={device}"])
    env = DistEnv(device=device)
    data = build_data(cfg.data, cfg.model.vocab_size)
    model, meth, opt = build_components(cfg, device)
    trainer = Trainer(cfg=cfg, run_dir=tmp, env=env, method=meth, model=model, optimizer=opt, data=data,
                      logger=RunLogger(tmp, enabled=False), ckpt_steps=[])
    for _ in range(warmup):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        rec = trainer.train_step()
    sync(device)
    secs = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters())
    tps = cfg.train.total_batch_size * cfg.data.seq_len * steps / secs
    peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    return {"method": method, "params": n, "tok_s": tps, "flops": 6 * n * tps, "mfu": 6 * n * tps / peak,
            "step_ms": 1e3 * secs / steps, "loss": rec["loss"], "peak_mem": peak_mem,
            "closed": closed_form_bytes(cfg), "precision": cfg.train.precision}, trainer


def landscape_rows(model: torch.nn.Module, tokens: torch.Tensor, mode: dict, compile_: bool) -> list[dict]:
    params0 = {n: p.detach() for n, p in model.named_parameters()}
    dirs = random_directions(params0, mode["dirs"], seed=0)
    alphas = torch.from_numpy(np.linspace(-0.003, 0.003, mode["alphas"]))
    batches = [tokens]
    engines = {"reference (study)": lambda: losses_along_directions_reference(model, params0, dirs, alphas, batches),
               "loop": lambda: losses_along_directions(model, params0, dirs, alphas, batches, method="loop"),
               f"vmap-{mode['chunk']}": lambda: losses_along_directions(model, params0, dirs, alphas, batches,
                                                                         method="vmap", chunk_size=mode["chunk"])}
    if compile_:
        engines["compiled"] = lambda: losses_along_directions(model, params0, dirs, alphas, batches, method="compiled")
    first, values, times = {}, {}, {k: [] for k in engines}
    for name, fn in engines.items():
        t0 = time.perf_counter()
        values[name] = fn()
        first[name] = time.perf_counter() - t0
    for _ in range(3):
        for name, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ref = values["reference (study)"]
    base = statistics.median(times["reference (study)"])
    rows = []
    for name in engines:
        if not torch.allclose(values[name], ref, rtol=1e-4, atol=1e-4):
            raise SystemExit(f"landscape engine {name} disagrees with the reference "
                             f"(max |dL| {float((values[name] - ref).abs().max()):.2e})")
        med = statistics.median(times[name])
        rows.append({"engine": name, "points_s": ref.numel() / med, "speedup": base / med, "first_s": first[name],
                     "max_diff": float((values[name] - ref).abs().max())})
    return rows


def numerics_rows(model: torch.nn.Module, tokens: torch.Tensor, mode: dict, device: torch.device) -> list[dict]:
    alphas = torch.from_numpy(np.linspace(-0.003, 0.003, mode["alphas"]))
    settings = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False)}
    if device.type == "cuda":
        settings["tf32 matmuls"] = (torch.float32, True)
    out = {}
    for name, (dtype, tf32) in settings.items():
        m = copy.deepcopy(model).to(dtype)
        params0 = {n: p.detach() for n, p in m.named_parameters()}
        dirs = random_directions({n: p.float() for n, p in params0.items()}, mode["dirs"], seed=0)
        dirs = [{k: v.to(dtype) for k, v in d.items()} for d in dirs]
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            curves = losses_along_directions(m, params0, dirs, alphas, [tokens], method="loop")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        out[name] = landscape_summary(curves, alphas)
    ref = out["fp32"]
    rows = []
    for name, s in out.items():
        rel = {k: (s[k] - ref[k]) / abs(ref[k]) if ref[k] else float("nan")
               for k in ("expected_sharpness", "direction_variance", "centre_loss")}
        rows.append({"setting": name, **{k: s[k] for k in rel}, **{f"rel_{k}": v for k, v in rel.items()}})
    return rows


def markdown(header: list[str], train: list[dict], land: list[dict], num: list[dict], peak_src: str) -> str:
    lines = [*header, "", "## Training", "",
             f"| method | params | precision | step | tokens/s | model TFLOP/s | MFU ({peak_src}) | peak memory | "
             "closed form (params + grads + state) | final loss |", "|---|" + "---|" * 9]
    for r in train:
        mem = "n/a (CPU)" if r["peak_mem"] != r["peak_mem"] else f"{r['peak_mem'] / 2**30:.2f} GiB"
        lines.append(f"| {r['method']} | {r['params'] / 1e6:.2f}M | {r['precision']} | {r['step_ms']:.1f} ms | "
                     f"{r['tok_s']:,.0f} | {r['flops'] / 1e12:.3f} | {100 * r['mfu']:.1f}% | {mem} | "
                     f"{r['closed'] / 2**30:.3f} GiB | {r['loss']:.3f} |")
    lines += ["", "## Landscape engines (points/s on the trained full-rank model)", "",
              "| engine | points/s | vs the study's in-place engine | first call | max abs diff |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['points_s']:.2f} | {r['speedup']:.2f}x | {r['first_s']:.1f} s | "
              f"{r['max_diff']:.1e} |" for r in land]
    lines += ["", "## bf16 vs fp32 on the same checkpoint and directions (1-D random landscape)", "",
              "| setting | ES | ES vs fp32 | DV | DV vs fp32 | centre loss | vs fp32 |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['expected_sharpness']:.4e} | {100 * r['rel_expected_sharpness']:+.2f}% | "
              f"{r['direction_variance']:.4e} | {100 * r['rel_direction_variance']:+.2f}% | {r['centre_loss']:.5f} | "
              f"{100 * r['rel_centre_loss']:+.3f}% |" for r in num]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="nano shape, fp32, seconds (the default without a GPU)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, if not in the table")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile landscape engine")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    mode = MODES["tiny" if args.tiny or device.type != "cuda" else "gpu"]
    peak, peak_src = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                              platform.machine())
    header = [f"# GPU check ({'tiny' if mode is MODES['tiny'] else '60m'} mode)", "",
              f"Device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; "
              f"`python benchmarks/gpu_check.py{' --tiny' if mode is MODES['tiny'] else ''}`; preset "
              f"{mode['preset']}, {mode['steps']} timed steps after {mode['warmup']} warm-up steps."]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train, trainer = [], None
        for method in ("full-rank", "galore"):
            row, tr = train_row(mode, method, device, Path(tmp) / method, peak)
            train.append(row)
            print(f"trained {method}: {row['tok_s']:,.0f} tokens/s, MFU {100 * row['mfu']:.1f}%", flush=True)
            trainer = tr if method == "full-rank" else trainer
        model = trainer.model.eval()
        rows = trainer.data.val_rows[: mode["seqs"]]
        from lowrank_lens.data import to_model_inputs

        ids, labels = to_model_inputs(rows, trainer.data.pad_id)
        tokens = (ids.to(device), labels.to(device))
        ctx = torch.autocast(device.type, enabled=False) if device.type == "cuda" else contextlib.nullcontext()
        with ctx:
            fp32 = copy.deepcopy(model).float()
            land = landscape_rows(fp32, tokens, mode, compile_=not args.no_compile and device.type == "cuda")
            num = numerics_rows(model.float(), tokens, mode, device)
    header[-1] += f" Total {time.perf_counter() - t0:.0f} s."
    text = markdown(header, train, land, num, peak_src)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
