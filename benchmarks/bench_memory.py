"""Memory of parameters, gradients and optimizer state per method and preset, measured without allocating.

For every registered method and every preset (micro, 60m, 130m, 350m, 1b) this builds the model, the
method's surgery and its optimizer with the training code itself (`train.run.build_components` and
`presets.build_config`; only the model is constructed on the meta device instead of CPU), runs one
forward/backward and one optimizer step on the meta device, and reads the bytes of the tensors that now
exist with `train.memory.measure_memory`, the accounting the training loop writes into every checkpoint.
Meta tensors have shapes and dtypes but no storage, so the 1b model costs nothing and the whole script takes
seconds. Each count is then compared with the closed form the method's own plugin declares
(`Method.footprint`, read by `closed_form` below, so a new method brings its closed form in its own file) and
with the published estimates (GaLore Table 2, Fira Table 3; docs/methods.md §2.4, §3.4, §7).

Two things do not run on meta as they do on a real device, and are handled as follows:

- GaLore/Fira's projector (`optim/projector.py`): `torch.linalg.svd` has a meta kernel and returns U, Vᵀ of
  the right shapes, but `_svd_basis` then checks `torch.isfinite(basis).all()`, which needs the values. On
  meta that check would fail and the projector would silently take its fallback path, so here `_svd_basis`
  is replaced by the same SVD and slicing without the finiteness check; `orthogonal_basis`, `_compact`, the
  dtype cast and the optimizer step itself run unchanged, and a fallback warning is turned into an error.
- A forward/backward that a method's code cannot run on meta (SLTrain's autograd Function asks
  `torch.is_autocast_enabled("meta")`, which raises) is replaced by gradients `zeros_like(p)` for every
  trainable parameter: autograd gives a leaf exactly that shape and dtype, so the optimizer step, the
  state it creates and the gradient bytes are the same. The table says for which methods this happened.

    python benchmarks/bench_memory.py                          # all presets, bf16 and fp32; writes docs/memory.md
    python benchmarks/bench_memory.py --presets 60m --no-write  # print only
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import lowrank_lens.train.run as run_module
from lowrank_lens.atomic import write_text_atomic
from lowrank_lens.config import RunConfig
from lowrank_lens.methods import get_method, method_names
from lowrank_lens.model import build_model
from lowrank_lens.optim import projector
from lowrank_lens.presets import build_config
from lowrank_lens.train.memory import measure_memory
from lowrank_lens.train.run import build_components

META = torch.device("meta")
PRESETS = ("micro", "60m", "130m", "350m", "1b")
PRECISIONS = {"bf16": "bf16-pure", "fp32": "fp32"}
DOC = Path(__file__).resolve().parent.parent / "docs" / "memory.md"
MIB = 2**20


# ---- closed forms: each method's plugin declares its footprint (Method.footprint) -------------------------
def _totals(state: list[dict[str, int]]) -> dict[str, int]:
    """Elements per state key, summed over the parameter groups."""
    out: Counter = Counter()
    for group in state:
        out.update(group)
    return dict(out)


def closed_form(cfg: RunConfig) -> dict:
    """What the method's plugin says it holds after one step (`Method.footprint` in its own file): params
    (total, trainable), grads, the buffers it adds, optimizer-state elements per key and per parameter group,
    and the state and buffer bytes. The measurement below is independent of it (it reads the real tensors)."""
    fp = get_method(cfg.method).footprint(cfg)
    state = [{k: v for k, v in g.items() if v} for g in fp.state]
    return {"params_total": sum(fp.trainable) + sum(fp.frozen), "params_trainable": sum(fp.trainable),
            "grads": sum(fp.trainable), "buffers": sum(fp.buffers), "buffer_bytes": fp.buffer_bytes,
            "state_groups": state, "state": _totals(state), "state_bytes": fp.state_bytes}


# ---- measurement on the meta device ------------------------------------------------------------------------
def _svd_basis_meta(matrix: torch.Tensor, rank: int, right: bool) -> torch.Tensor:
    """projector._svd_basis without its data-dependent finiteness check (meta tensors have no values)."""
    U, _, Vh = torch.linalg.svd(matrix, full_matrices=False)
    return Vh[:rank] if right else U[:, :rank]


@contextmanager
def _on_meta():
    """build_components with the model constructed on meta, and the projector's meta-safe SVD."""
    def meta_model(model_cfg, seed=None):
        return build_model(model_cfg, seed=seed, device=META)

    with mock.patch.object(run_module, "build_model", meta_model), \
            mock.patch.object(projector, "_svd_basis", _svd_basis_meta), warnings.catch_warnings():
        warnings.simplefilter("error", projector.SVDFallbackWarning)
        yield


def _forward_backward(cfg: RunConfig, model: torch.nn.Module) -> str:
    """One micro-batch forward/backward as train_step does (token_nll's loss). Returns "yes", or "no (error)"
    when the forward cannot run on this device and the gradients were set to zeros_like(param) instead."""
    B, T = cfg.train.micro_batch_size, cfg.data.seq_len
    device = next(model.parameters()).device
    ids = torch.zeros(B, T, dtype=torch.long, device=device)
    # A prepared 4-D causal mask: transformers' own mask builder inspects values (.all()), impossible on meta.
    mask = torch.ones(B, 1, T, T, dtype=torch.bool, device=device).tril()
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
        nll.backward()
        return "yes"
    except (RuntimeError, NotImplementedError) as err:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        return f"no ({type(err).__name__}: {str(err).splitlines()[0][:100]})"


def _state_counts(optimizer: torch.optim.Optimizer) -> tuple[list[dict[str, int]], dict[str, int]]:
    """Elements of the optimizer state per key in each parameter group, and bytes per key (python numbers
    hold no tensor memory)."""
    groups, nbytes = [], Counter()
    for group in optimizer.param_groups:
        numel: Counter = Counter()
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor):
                    numel[k] += v.numel()
                    nbytes[k] += v.numel() * v.element_size()
        groups.append(dict(numel))
    return groups, dict(nbytes)


def _added_buffers(cfg: RunConfig, model: torch.nn.Module) -> tuple[int, int]:
    """(elements, bytes) of the buffers the method's surgery added: those the plain model does not have."""
    own = {n for n, _ in build_model(cfg.model, device=META).named_buffers()}
    added = [b for n, b in model.named_buffers() if n not in own]
    return sum(b.numel() for b in added), sum(b.numel() * b.element_size() for b in added)


def measure(preset: str, method: str, precision: str, device: torch.device = META) -> dict:
    """Build as training does (on meta), one forward/backward and optimizer step, then count.
    `device="cpu"` does the same with real tensors (small presets only: the tests compare the two)."""
    cfg = build_config(preset, method, [f"train.precision={precision}"])
    with _on_meta() if device == META else nullcontext():
        model, _, optimizer = build_components(cfg, device)
        grads_from = _forward_backward(cfg, model)
        params = [p for p in model.parameters() if p.grad is not None]
        if cfg.optim.grad_clip > 0:  # as train_step; the norm has no value on meta, the op still runs
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
    mem = measure_memory(model, optimizer, device)
    groups, nbytes = _state_counts(optimizer)
    buffers, buffer_bytes = _added_buffers(cfg, model)
    got = {"params_total": mem["params_total"], "params_trainable": mem["params_trainable"],
           "grads": sum(p.grad.numel() for p in params), "buffers": buffers, "buffer_bytes": buffer_bytes,
           "state_groups": groups, "state": _totals(groups), "state_bytes": mem["optimizer_state_bytes"]}
    return {"preset": preset, "method": method, "precision": precision, "cfg": cfg, "mem": mem,
            "counts": got, "closed": closed_form(cfg), "state_bytes_by_key": nbytes, "grads_from": grads_from}


# ---- published estimates (docs/methods.md §2.4 Tables 2 and 6, §3.4 Table 3), in the papers' "G" ----------------
GALORE_T2 = {  # weights + optimizer states, BF16
    "full-rank": (0.36, 0.76, 2.06, 7.80), "galore": (0.24, 0.52, 1.22, 4.38), "relora": (0.36, 0.80, 1.76, 6.17)}
GALORE_T6_WEIGHTS = {"full-rank": (0.12, 0.25, 0.68, 2.60), "galore": (0.12, 0.25, 0.68, 2.60),
                     "relora": (0.20, 0.44, 1.04, 3.79)}
GALORE_T6_STATES = {"full-rank": (0.23, 0.51, 1.37, 5.20), "galore": (0.13, 0.28, 0.54, 1.78),
                    "relora": (0.17, 0.37, 0.72, 2.38)}
FIRA_T3 = {  # params + gradients + optimizer states
    "full-rank": (0.48, 1.01, 2.74, 10.40), "galore": (0.36, 0.77, 1.90, 6.98), "fira": (0.36, 0.77, 1.90, 6.98),
    "relora": (0.44, 0.99, 2.12, 7.36)}
PUBLISHED_SCALES = ("60m", "130m", "350m", "1b")


# ---- tables ------------------------------------------------------------------------------------------------
def _mib(b: int) -> str:
    return f"{b / MIB:,.1f}"


def _gb(b: int) -> str:
    return f"{b / 1e9:.3f}"


def _total(r: dict) -> int:
    m = r["mem"]
    return m["param_bytes"] + m["grad_bytes"] + m["optimizer_state_bytes"]


def _match(r: dict) -> str:
    bad = [k for k in r["closed"] if r["closed"][k] != r["counts"][k]]
    if bad:
        return "DIFFERS: " + ", ".join(f"{k} {r['counts'][k]} vs {r['closed'][k]}" for k in bad)
    return "exact"


def main_table(rows: list[dict], precision: str) -> str:
    out = ["| preset | method | params total / trainable | params MiB | grads MiB | optimizer state MiB "
           "| p+g+s MiB | vs full-rank | buffers MiB | state = closed form | fwd/bwd on meta |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["preset"]: _total(r) for r in rows if r["method"] == "full-rank" and r["precision"] == precision}
    for r in rows:
        if r["precision"] != precision:
            continue
        m = r["mem"]
        out.append(f"| {r['preset']} | {r['method']} | {m['params_total'] / 1e6:.2f}M / "
                   f"{m['params_trainable'] / 1e6:.2f}M | {_mib(m['param_bytes'])} | {_mib(m['grad_bytes'])} | "
                   f"{_mib(m['optimizer_state_bytes'])} | {_mib(_total(r))} | "
                   f"{_total(r) / base[r['preset']]:.2f}x | {_mib(m['buffer_bytes'])} | {_match(r)} | "
                   f"{'yes' if r['grads_from'] == 'yes' else 'no: zeros_like grads'} |")
    return "\n".join(out)


# Display order of the state keys: the moment and projector tensors get a column each, every other key (per-tensor
# scalars: AdamW's step, GaLore's side flag, Fira's residual norm, or a new method's) shares the scalars column.
TENSOR_KEYS = ("exp_avg", "exp_avg_sq", "basis")


def state_table(rows: list[dict], preset: str) -> str:
    """Optimizer-state elements per key at one preset: measured = closed form."""
    rows = [r for r in rows if r["preset"] == preset and r["precision"] == "bf16-pure"]
    scalars = list(dict.fromkeys(k for r in rows for k in r["counts"]["state"] if k not in TENSOR_KEYS))
    out = ["| method | exp_avg | exp_avg_sq | basis (projector) | scalars (" + " / ".join(scalars) + ") "
           "| total elements | of which low-rank moments + projector |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["counts"]["state"]
        scal = " / ".join(f"{c.get(k, 0):,}" for k in scalars)
        # Groups after the first are the method's own (GaLore/Fira's projected matrices); the first is plain Adam.
        extra = sum(g.get(k, 0) for g in r["counts"]["state_groups"][1:] for k in TENSOR_KEYS)
        out.append(f"| {r['method']} | {c.get('exp_avg', 0):,} | {c.get('exp_avg_sq', 0):,} | {c.get('basis', 0):,} "
                   f"| {scal} | {sum(c.values()):,} | {f'{extra:,}' if extra else ''} |")
    return "\n".join(out)


def published_table(rows: list[dict]) -> str:
    out = ["| method | scale | ours: weights + states (GB) | GaLore T2 | ours: weights / states (GB) | GaLore T6 "
           "| ours: p + g + s (GB) | Fira T3 |", "|---|---|---|---|---|---|---|---|"]
    by = {(r["method"], r["preset"]): r for r in rows if r["precision"] == "bf16-pure"}
    for method in ("full-rank", "galore", "fira", "relora"):
        for j, scale in enumerate(PUBLISHED_SCALES):
            r = by.get((method, scale))
            if r is None:
                continue
            m = r["mem"]
            ws = m["param_bytes"] + m["optimizer_state_bytes"]
            t2 = GALORE_T2.get(method, GALORE_T2["galore"] if method == "fira" else None)
            w6 = GALORE_T6_WEIGHTS.get(method, GALORE_T6_WEIGHTS["galore"] if method == "fira" else None)
            s6 = GALORE_T6_STATES.get(method, GALORE_T6_STATES["galore"] if method == "fira" else None)
            note = " (as GaLore)" if method == "fira" else ""
            out.append(f"| {method} | {scale} | {_gb(ws)} | {t2[j]}{note} | {_gb(m['param_bytes'])} / "
                       f"{_gb(m['optimizer_state_bytes'])} | {w6[j]} / {s6[j]}{note} | {_gb(_total(r))} | "
                       f"{FIRA_T3[method][j]} |")
    return "\n".join(out)


def fp32_table(rows: list[dict]) -> str:
    presets = [p for p in PRESETS if any(r["preset"] == p and r["precision"] == "fp32" for r in rows)]
    out = ["| method | " + " | ".join(presets) + " |", "|---|" + "---|" * len(presets)]
    by = {(r["method"], r["preset"]): r for r in rows if r["precision"] == "fp32"}
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for p in presets:
            r = by[(method, p)]
            m = r["mem"]
            cells.append(f"{_mib(_total(r))} ({_mib(m['optimizer_state_bytes'])})")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def readme_rows(rows: list[dict]) -> str:
    by = {(r["method"], r["preset"]): r for r in rows if r["precision"] == "bf16-pure"}
    out = ["| method | measured memory, 60m | measured memory, 1b |", "|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for preset, unit, div in (("60m", "MiB", MIB), ("1b", "GiB", 2**30)):
            r = by.get((method, preset))
            ratio = _total(r) / _total(by[("full-rank", preset)]) if r and ("full-rank", preset) in by else None
            cells.append(f"{_total(r) / div:,.{0 if unit == 'MiB' else 2}f} {unit} ({ratio:.2f}x)" if r else "-")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


PROSE_TEMPLATE = Path(__file__).with_name("memory_doc_template.md")
"""docs/memory.md with str.format fields (when, machine, tables...); literal braces are doubled."""


def formulas(methods: list[str]) -> str:
    """The closed forms in words, one bullet per method, from each plugin's `memory_formula`."""
    return "\n".join(f"- **{m}**: {get_method(m).memory_formula or '(the plugin states no formula)'}"
                     for m in methods)


def render(rows: list[dict], secs: float) -> str:
    fallbacks = sorted({f"{r['method']} (`{r['grads_from'][4:-1]}`)" for r in rows if r["grads_from"] != "yes"})
    return PROSE_TEMPLATE.read_text().format(
        formulas=formulas(list(dict.fromkeys(r["method"] for r in rows))),
        when=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
        torch=torch.__version__, n=len(rows), secs=secs, fallbacks=", ".join(fallbacks) or "no method",
        bf16=main_table(rows, "bf16-pure"), fp32=fp32_table(rows), state60=state_table(rows, "60m"),
        published=published_table(rows), readme=readme_rows(rows))


def _fsdp_section() -> str:
    """The per-rank FSDP2 section that benchmarks/bench_fsdp_memory.py wrote into the doc, kept as it is."""
    old = DOC.read_text() if DOC.is_file() else ""
    begin, end = "<!-- fsdp -->", "<!-- /fsdp -->"
    if begin not in old or end not in old:
        return ""
    return "\n" + old[old.index(begin):old.index(end) + len(end)] + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--no-write", action="store_true", help=f"print only, do not write {DOC}")
    args = ap.parse_args()
    t0 = time.perf_counter()
    methods = sorted(method_names(), key=lambda m: m != "full-rank")  # the baseline first, then registry order
    rows = [measure(p, m, PRECISIONS[d]) for d in args.precisions for p in args.presets for m in methods]
    secs = time.perf_counter() - t0
    for d in args.precisions:
        print(f"\n{d}:\n" + main_table(rows, PRECISIONS[d]))
    if all(p in args.presets for p in PUBLISHED_SCALES) and "bf16" in args.precisions:
        print("\n" + published_table(rows))
    print(f"\n{len(rows)} builds in {secs:.1f} s")
    if not args.no_write and set(args.presets) == set(PRESETS) and set(args.precisions) == set(PRECISIONS):
        write_text_atomic(DOC, render(rows, secs) + _fsdp_section())
        print(f"wrote {DOC}")
    if any(_match(r) != "exact" for r in rows):
        raise SystemExit("measured counts differ from the closed forms (see the tables)")


if __name__ == "__main__":
    main()
