"""How far a study's setup is from the paper's protocol, so that no verdict is read out of its context.

The findings stage computes it (findings/setup.json) and the report's first screen states it beside the
claims: model size, tokens per parameter, how each learning rate was chosen, seeds, data and metric settings,
each next to the paper's (docs/study.md §1-2). A study far from the protocol (under 1M parameters, under 5
tokens per parameter, or learning rates nobody tuned for its shape) gets a warning that its verdicts are
about its own setup, not a test of the paper's claims.
"""

from __future__ import annotations

import math
from typing import Any

# The paper's protocol (docs/study.md §1): 60m / 130m / 350m LLaMA on C4 with t5-base, 512 x 256 tokens per
# step for 10K / 20K / 60K steps, each method at its official script's lr, one training seed (inferred),
# metrics at 100 random directions, 25 grid points and 1000 validation sequences of 256 tokens.
PAPER_PARAMS = (58.07e6, 134.11e6, 367.97e6)
PAPER_TOKENS = (10_000 * 512 * 256, 20_000 * 512 * 256, 60_000 * 512 * 256)
PAPER = {"parameters": "58M-368M (60m, 130m, 350m)",
         "tokens per parameter": "19.5-22.6 (1.3B-7.9B tokens)",
         "learning rates": "each method's official script's lr, untuned",
         "seeds": "1 training seed (inferred)", "data": "C4 (English), t5-base tokenizer, rows of 256",
         "metric settings": "100 random directions, 25 grid points, 1000 validation sequences of 256 tokens"}
FAR_PARAMS, FAR_TOKENS_PER_PARAM = 1e6, 5.0


def _span(values: list[float], fmt) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if math.isclose(lo, hi, rel_tol=0.01) else f"{fmt(lo)}-{fmt(hi)}"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _ratio(v: float) -> str:
    return f"{v:.2g}" if v < 10 else f"{v:.1f}"


def _lr_choice(spec: dict[str, Any], methods: list[str]) -> tuple[str, bool]:
    """(how the runs' learning rates were chosen, whether they were tuned for this shape)."""
    if spec.get("tune"):
        grid = ", ".join(f"{m:g}" for m in spec.get("tune_grid") or [])
        return f"tuned per method by this study's tune stage (preset lr x {grid}; tune/tune.csv)", True
    set_lr = sorted(m for m, ov in (spec.get("method_overrides") or {}).items()
                    if any(str(o).startswith("optim.lr=") for o in ov))
    tuned_note = any("tuned" in str(n).lower() and "learning rate" in str(n).lower() for n in spec.get("notes") or [])
    if set_lr and tuned_note:
        rest = sorted(set(methods) - set(set_lr))
        return (f"tuned for this shape by an earlier tune stage and set in the study ({len(set_lr)} methods)"
                + (f"; {', '.join(rest)}: preset lr" if rest else ""), not rest)
    if set_lr:
        return f"set by hand in the study file for {', '.join(set_lr)}; others: the preset's lr", False
    return "each method's preset lr (its official scripts' value), not tuned for this shape", False


def _metric_settings(spec: dict[str, Any]) -> str:
    over = [str(o) for o in spec.get("metric_overrides") or []]
    keep = [o for o in over if o.split("=")[0] in ("landscape_random.directions", "landscape_random.points")]
    seq = spec.get("sequences")
    parts = keep + ([f"{seq} validation sequences"] if seq else [])
    return (", ".join(parts) or "the protocol's") + (f" (+{len(over) - len(keep)} more reduced options)"
                                                     if len(over) > len(keep) else "")


def setup_distance(spec: dict[str, Any], runs: list[Any]) -> dict[str, Any]:
    """{rows: [{aspect, this study, the paper}], line: one sentence for the first screen, far: bool}.
    `runs`: report.collect.RunInfo of the study (config and final checkpoint meta)."""
    done = [r for r in runs if r.checkpoints]
    params = [float((r.final.get("memory") or {}).get("params_total") or 0) for r in done]
    tokens = [float(r.final.get("tokens") or 0) for r in done]
    ratio = [t / p for t, p in zip(tokens, params, strict=True) if p > 0]
    methods = sorted({r.method for r in done})
    lr_text, lr_tuned = _lr_choice(spec, methods)
    data = sorted({f"{(r.config.get('data') or {}).get('source', '?')}, tokenizer "
                   f"{(r.config.get('data') or {}).get('tokenizer', '?')} (vocab "
                   f"{(r.config.get('model') or {}).get('vocab_size', '?')}), rows of "
                   f"{(r.config.get('data') or {}).get('seq_len', '?')}" for r in done})
    seeds = sorted({r.seed for r in done}, key=str)
    ours = {"parameters": _span([p for p in params if p > 0], _count) if any(params) else "unknown",
            "tokens per parameter": _span(ratio, _ratio) if ratio else "unknown",
            "learning rates": lr_text, "seeds": f"{len(seeds)} training seed{'s' * (len(seeds) != 1)}",
            "data": "; ".join(data) or "unknown", "metric settings": _metric_settings(spec)}
    rows = [{"aspect": k, "this study": ours[k], "the paper": PAPER[k]} for k in PAPER]
    far = (bool(params) and max(params) < FAR_PARAMS) or (bool(ratio) and max(ratio) < FAR_TOKENS_PER_PARAM) \
        or not lr_tuned
    line = (f"Setup vs the paper: {ours['parameters']} parameters (paper {PAPER['parameters'].split(' (')[0]}); "
            f"{ours['tokens per parameter']} tokens per parameter (paper about 20); learning rates "
            f"{'tuned for this shape' if lr_tuned else 'not tuned for this shape'} (paper: official values); "
            f"{ours['seeds']} (paper 1).")
    if far:
        line += (" These verdicts describe this setup; they do not test the paper's claims, which were made at "
                 "the paper's protocol.")
    # One line for the first screen, beside the verdicts: this setup, then the paper's.
    short = (f"This setup: {ours['parameters']} parameters · {ours['tokens per parameter']} tokens/parameter · "
             f"lr {'tuned' if lr_tuned else 'not tuned'} for this shape · {ours['seeds'].split(' ')[0]} "
             f"seed{'s' * (len(seeds) != 1)}. The paper: 58M-368M · about 20 · official lrs · 1."
             + (" Not a test of its claims." if far else ""))
    return {"rows": rows, "line": line, "short": short, "far": far}
