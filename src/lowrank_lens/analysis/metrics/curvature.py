"""Curvature of L(theta) at a checkpoint: the top Hessian eigenvalue and the Hessian trace.

The study's Hessian scripts (`8_...`) are absent from its code snapshot (docs/study.md §2, dimension 3
"also referenced but not in the snapshot"), so this is our own, documented construction, and the direct
measurement behind the random-direction sharpness of docs/study.md L1 (E[ES] ~ tr(H)/2 * mean alpha^2, see
maths/landscape.expected_sharpness). L is the token-weighted mean NLL on the evaluation tokens
(maths/loss.py), H its Hessian w.r.t. the native parameterization's parameters:

- params='all' (default): every floating parameter of the trained parameterization (embeddings, norms,
  LM head, CoLA/SLTrain/LoRA factors, ReLoRA's frozen W0): the set the landscape metrics perturb;
  params='trainable': only those with requires_grad (ReLoRA's W0 is left out). `include` narrows either
  set by a regular expression on parameter names.
- top eigenvalue: Lanczos (lambda_max, the largest algebraic Ritz value; the smallest one is reported as
  bottom_eigenvalue) or power iteration, which converges to the eigenvalue of LARGEST MAGNITUDE (signed):
  lambda_min when a negative eigenvalue dominates (PyHessian's meaning, docs/ecosystem.md §2.3).
- trace: Hutchinson with a fixed number of Rademacher probes and a Student-t confidence interval.

HVPs are exact double-backward (or forward-over-reverse) products, run by maths.curvature under the MATH
SDPA kernel (the fused SDPA kernels have no double backward, docs/ecosystem.md §2.3). The model is loaded in
fp32 (or fp64) whatever the evaluation dtype, because second-order products in bf16 are noise.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import LensError
from ..base import Metric, Result, part_range
from ..charts import Chart, Series, lines_by_method, one_legend_entry, run_label
from ..context import Context
from ..maths.curvature import (
    HVP_METHODS,
    hutchinson_samples,
    lanczos,
    model_hessian,
    power_iteration,
    trace_estimate,
)
from ..subjects import Subject
from . import register

log = logging.getLogger("lowrank_lens")

EIGEN_METHODS = ("lanczos", "power")
PARAM_SETS = ("all", "trainable")
COMPUTE_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


@dataclass
class CurvatureConfig:
    eigen_method: str = "lanczos"
    """'lanczos' (lambda_max) or 'power' (power iteration: the largest-|lambda| eigenvalue, signed)."""
    lanczos_iters: int = 20
    """Lanczos steps = HVPs for the eigenvalues; the top Ritz value converges first."""
    reorthogonalize: bool = True
    """Full re-orthogonalisation in Lanczos: keeps lanczos_iters vectors of n_params (memory
    lanczos_iters x n_params x 4 bytes in fp32); False keeps three (spurious Ritz copies possible)."""
    power_iters: int = 50
    """Maximum power-iteration steps (HVPs)."""
    power_tol: float = 1e-4
    """Power iteration stops when the Rayleigh quotient changes by less than this (relative)."""
    hutchinson_probes: int = 30
    """Rademacher probes (HVPs) for the trace; fixed count, no early stop."""
    confidence: float = 0.95
    """Level of the trace's confidence interval (mean +- Student t quantile x stderr)."""
    seed: int = 0
    """Seed of the eigen start vector; the trace probes use seed + 1."""
    params: str = "all"
    """'all' floating parameters of the native parameterization, or 'trainable' (requires_grad) ones."""
    include: str = ""
    """Regular expression: keep only parameters whose name matches (re.search); empty = no filter."""
    dtype: str = "fp32"
    """Model, HVP and Krylov-vector dtype: fp32 or fp64 (never the bf16 evaluation dtype)."""
    hvp: str = "double_backward"
    """HVP method of maths.curvature: double_backward or jvp (forward-over-reverse)."""
    sequences: int = 0
    """Use only the first N evaluation sequences for the HVPs (0 = every sequence of the evaluation set)."""

    def __post_init__(self) -> None:
        for fld, value, valid in (("eigen_method", self.eigen_method, EIGEN_METHODS),
                                  ("params", self.params, PARAM_SETS), ("dtype", self.dtype, tuple(COMPUTE_DTYPES)),
                                  ("hvp", self.hvp, HVP_METHODS)):
            if value not in valid:
                raise LensError(f"curvature.{fld} {value!r} is not one of {', '.join(valid)}")
        if self.lanczos_iters < 1 or self.power_iters < 1 or self.hutchinson_probes < 2 or self.sequences < 0:
            raise LensError(f"curvature needs lanczos_iters >= 1 ({self.lanczos_iters}), power_iters >= 1 "
                            f"({self.power_iters}), hutchinson_probes >= 2 ({self.hutchinson_probes}) and "
                            f"sequences >= 0 ({self.sequences})")
        if not 0 < self.confidence < 1:
            raise LensError(f"curvature.confidence must be in (0, 1), got {self.confidence}")
        try:
            re.compile(self.include)
        except re.error as e:
            raise LensError(f"curvature.include {self.include!r} is not a regular expression: {e}") from e


KRYLOV_GPU_HEADROOM = 0.9
"""The Krylov basis stays on the GPU while it and one HVP's working memory fit in this share of the free memory."""


def krylov_home(dim: int, vectors: int, dtype: torch.dtype, device: torch.device, hvp_bytes: int = 0) -> torch.device:
    """Where Lanczos keeps its re-orthogonalisation basis (vectors x dim): on `device`, unless that is a GPU
    whose free memory (measured after the first HVP) cannot hold the basis beside one more HVP's working
    memory `hvp_bytes` (its double-backward graph: the peak of the first HVP) with 10% to spare; then in host
    memory, so the GPU holds the model, the HVP graph and a few vectors only (at 350m, 20 fp32 vectors are
    29 GB and the graph at batch 64 ~116 GB). Where it lives changes no result beyond matmul rounding; it is
    recorded in the result's info."""
    need = vectors * dim * torch.finfo(dtype).bits // 8
    if device.type != "cuda" or need == 0:
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if need + hvp_bytes <= KRYLOV_GPU_HEADROOM * free:
        return device
    log.info(f"    curvature: the Lanczos basis ({need / 2**30:.1f} GiB) is kept in host memory "
             f"({free / 2**30:.1f} GiB free on {device}, {hvp_bytes / 2**30:.1f} GiB needed by each HVP)")
    return torch.device("cpu")


def hessian_params(model: torch.nn.Module, which: str = "all", include: str = "") -> dict[str, torch.Tensor]:
    """{name: detached parameter} of the chosen set (see CurvatureConfig.params / include), in model order."""
    out = {n: p.detach() for n, p in model.named_parameters()
           if p.is_floating_point() and (which == "all" or p.requires_grad) and (not include or re.search(include, n))}
    if not out:
        raise LensError(f"no parameter matches params={which!r} include={include!r}")
    return out


def first_sequences(batches: list[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    """The first n rows of a list of batches (n = 0: all), cutting the last batch if needed."""
    if n <= 0:
        return batches
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        rows = b["input_ids"].shape[0]
        out.append(b if rows <= left else {k: v[:left] for k, v in b.items()})
        left -= rows
    return out


class _CountingMatvec:
    """Wraps a HessianOperator: answers on the vector's own device (the maths draws start and probe
    vectors on the CPU; the operator works on the model's device) and reports progress."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], ctx: Context, total: int) -> None:
        self.op, self.ctx, self.total, self.done, self.start = op, ctx, total, 0, time.perf_counter()
        self.hvp_bytes = 0
        """Memory one HVP needs on a GPU beyond what was allocated before it (its peak; measured once)."""

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        cuda = self.done == 0 and self.ctx.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
            before = torch.cuda.memory_allocated(self.ctx.device)
        hv = self.op(v).to(v.device)
        if cuda:
            self.hvp_bytes = torch.cuda.max_memory_allocated(self.ctx.device) - before
        self.done += 1
        self.ctx.progress("Hessian-vector products", self.done, self.total, self.start)
        return hv


@register
class Curvature(Metric):
    name = "curvature"
    dimension = "curvature"
    subject_kind = "checkpoint"
    headline = "top_eigenvalue"
    Config = CurvatureConfig
    definition = ("Top Hessian eigenvalue of the evaluation loss at the checkpoint (Lanczos on exact Hessian-vector "
                  "products) and the Hessian trace (Hutchinson, with a 95% CI), over the native parameterization; "
                  "not in the study's code (reviewers' request), the direct measure behind the sharpness L1.")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        return self.combine(subject, [self.compute_part(subject, ctx, 0, 1)])

    def parts(self, subject: Subject) -> int:
        return 1 + self.cfg.hutchinson_probes  # the eigenvalue (sequential), then each probe alone

    def _eigen_steps(self) -> int:
        return self.cfg.lanczos_iters if self.cfg.eigen_method == "lanczos" else self.cfg.power_iters

    def _piece(self, part: int, parts: int) -> tuple[bool, range]:
        """(does this piece compute the eigenvalue, its probes): piece 0 does the eigenvalue and as many probes
        as bring it to an equal share of the HVPs, the others split the remaining probes evenly."""
        probes = self.cfg.hutchinson_probes
        if parts == 1:
            return True, range(probes)
        first = min(probes, max(0, round((self._eigen_steps() + probes) / parts) - self._eigen_steps()))
        if part == 0:
            return True, range(first)
        r = part_range(probes - first, part - 1, parts - 1)
        return False, range(first + r.start, first + r.stop)

    def compute_part(self, subject: Subject, ctx: Context, part: int, parts: int) -> Result:
        cfg = self.cfg
        eigen, probes = self._piece(part, parts)
        scalars: dict[str, float] = {}
        arrays: dict[str, np.ndarray] = {"trace_samples": np.zeros(0)}
        info: dict = {"probes": [probes.start, probes.stop], "hvps": 0}
        if not (eigen or probes):
            return Result(metric=self.name, subject=subject.describe(), arrays=arrays, info=info)
        (ckpt,) = subject.checkpoints
        dtype = COMPUTE_DTYPES[cfg.dtype]
        model = ctx.load(ckpt, dtype=dtype).model
        params0 = hessian_params(model, cfg.params, cfg.include)
        batches = first_sequences(ctx.batches(subject.home), cfg.sequences)
        op = model_hessian(model, params0, batches, method=cfg.hvp)
        matvec = _CountingMatvec(op, ctx, (self._eigen_steps() if eigen else 0) + len(probes))
        if eigen and cfg.eigen_method == "lanczos":
            vectors = cfg.lanczos_iters if cfg.reorthogonalize else 0
            homes: list[torch.device] = []

            def home() -> torch.device:  # lanczos asks after the first HVP, whose peak memory is then known
                homes.append(krylov_home(op.dim, vectors, dtype, ctx.device, matvec.hvp_bytes))
                return homes[-1]

            lz = lanczos(matvec, op.dim, cfg.lanczos_iters, seed=cfg.seed, reorthogonalize=cfg.reorthogonalize,
                         dtype=dtype, basis_device=home)
            info["krylov_basis"] = f"{homes[0] if homes else ctx.device} ({vectors} x {op.dim})"
            scalars.update(top_eigenvalue=lz.top, bottom_eigenvalue=lz.bottom)
            arrays["ritz_values"] = lz.ritz_values.numpy()
            info["eigen_steps"] = lz.n_iter
        elif eigen:
            pw = power_iteration(matvec, op.dim, cfg.power_iters, tol=cfg.power_tol, seed=cfg.seed, dtype=dtype)
            scalars["top_eigenvalue"] = pw.eigenvalue
            info.update(eigen_steps=pw.n_iter, power_converged=pw.converged,
                        eigen_meaning="largest-magnitude eigenvalue (signed)")
        arrays["trace_samples"] = hutchinson_samples(matvec, op.dim, probes, seed=cfg.seed + 1, dtype=dtype).numpy()
        info.update(n_params=op.dim, n_tensors=len(params0), params=cfg.params, include=cfg.include,
                    compute_dtype=str(dtype), eval_dtype=str(ctx.dtype), hvp=cfg.hvp, sdpa="MATH kernel",
                    sequences=sum(int(b["input_ids"].shape[0]) for b in batches), hvps=matvec.done,
                    eigen_seed=cfg.seed, probe_seed=cfg.seed + 1, eigen_method=cfg.eigen_method)
        return Result(metric=self.name, subject=subject.describe(), scalars=scalars, arrays=arrays, info=info)

    def combine(self, subject: Subject, pieces: list[Result]) -> Result:
        eigen = pieces[0]  # piece 0 always holds the eigenvalue and the shared details
        tr = trace_estimate(torch.from_numpy(np.concatenate([p.arrays["trace_samples"] for p in pieces])),
                            self.cfg.confidence)
        scalars = dict(eigen.scalars, trace=tr.mean, trace_stderr=tr.stderr, trace_ci_low=tr.ci_low,
                       trace_ci_high=tr.ci_high)
        arrays = dict(eigen.arrays, trace_samples=tr.samples.numpy())
        info = {k: v for k, v in eigen.info.items() if k != "probes"}
        info["hvps"] = sum(int(p.info["hvps"]) for p in pieces)
        return Result(metric=self.name, subject=subject.describe(), scalars=scalars, arrays=arrays, info=info)

    def charts(self, results: list[Result]) -> list[Chart]:
        return [lines_by_method(results, "top_eigenvalue", "curvature_top_eigenvalue", "top Hessian eigenvalue"),
                _trace_chart(results, self.cfg.confidence)]


def _trace_chart(results: list[Result], confidence: float) -> Chart:
    """Hutchinson trace vs step, one line per run (coloured by method), with its confidence interval as bars."""
    by_run: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        if "trace" in r.scalars:
            by_run[run_label(r)].append(r)
    series = []
    for (run, method), rs in sorted(by_run.items()):
        rs.sort(key=lambda r: int(r.subject.get("step", 0)))
        sc = [r.scalars for r in rs]
        series.append(Series(
            [int(r.subject.get("step", 0)) for r in rs], [s["trace"] for s in sc], name=run, method=method,
            low=[s["trace_ci_low"] for s in sc], high=[s["trace_ci_high"] for s in sc], interval="bars",
            hover={"run": [run] * len(rs), "seed": [r.subject.get("seed") for r in rs],
                   "scale": [r.subject.get("scale") for r in rs], "stderr": [s.get("trace_stderr") for s in sc],
                   "probes": [len(r.arrays.get("trace_samples", ())) for r in rs]}))
    return Chart(name="curvature_trace", title="Hessian trace (Hutchinson)", x_label="training step",
                 y_label="Hessian trace (Hutchinson, CI)", series=one_legend_entry(series),
                 caption=f"Hutchinson estimate of the Hessian trace with its {100 * confidence:g}% confidence "
                         "interval (Student t), one line per run.")
