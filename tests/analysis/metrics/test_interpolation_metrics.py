"""Known answers of the interpolation metrics (docs/study.md I1, I2) and the update spectra (S4-S6), on the
tiny trained runs of every method (conftest.tiny_runs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lowrank_lens.analysis.context import Context, EvalSettings
from lowrank_lens.analysis.maths.loss import mean_nll
from lowrank_lens.analysis.metrics.imib import IMIB, IMIBConfig
from lowrank_lens.analysis.metrics.interpolation import (
    Interpolation,
    InterpolationConfig,
    alpha_grid,
    check_same_buffers,
    params_of,
)
from lowrank_lens.analysis.metrics.update_spectra import UpdateSpectra, UpdateSpectraConfig
from lowrank_lens.analysis.subjects import RunRef, Subject
from lowrank_lens.errors import LensError

SETTINGS = EvalSettings(sequences=8, batch_size=4)


def pair(kind: str, run_a: RunRef, ia: int, run_b: RunRef, ib: int) -> Subject:
    label = "pair" if kind == "cross" else "consecutive"
    return Subject(kind, label, (run_a.checkpoints[ia], run_b.checkpoints[ib]), (run_a, run_b))


def test_interpolation_endpoints_are_the_checkpoints_losses(tiny_runs):
    run = RunRef.open(tiny_runs["sltrain"])  # a sparse-support buffer, checked equal at both ends
    ctx = Context(SETTINGS)
    res = Interpolation(InterpolationConfig(points=3)).compute(pair("consecutive", run, 1, run, 2), ctx)
    batches = ctx.batches(run)
    ma, mb = ctx.load(run.checkpoints[1]).model, ctx.load(run.checkpoints[2]).model
    with torch.no_grad():
        la, lb = float(mean_nll(ma, batches)), float(mean_nll(mb, batches))
        pa, pb = params_of(ma), params_of(mb)
        mid = float(mean_nll(ma, batches, {n: 0.5 * pa[n] + 0.5 * pb[n] for n in pa}))
    assert np.allclose(res.arrays["alphas"], [0.0, 0.5, 1.0])
    assert res.scalars["loss_start"] == pytest.approx(la, abs=1e-9)
    assert res.scalars["loss_end"] == pytest.approx(lb, abs=1e-9)
    assert res.arrays["curve"][1] == pytest.approx(mid, abs=1e-5)
    assert res.scalars["barrier"] == pytest.approx(mid - 0.5 * (la + lb), abs=1e-5)
    assert res.scalars["barrier_linear"] == pytest.approx(res.scalars["barrier"], abs=1e-5)  # a = 1/2
    assert res.scalars["loss_max"] == pytest.approx(max(la, lb, mid), abs=1e-5)


def test_interpolation_refuses_different_buffers():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    a.register_buffer("support", torch.tensor([0, 1]))
    b.register_buffer("support", torch.tensor([0, 2]))
    with pytest.raises(LensError, match="support"):
        check_same_buffers(a, b, "test")


def test_alpha_grid_accepts_the_study_script_default():
    a = alpha_grid(-0.25, 1.25, 31)
    assert (a == 0.0).sum() == 1 and (a == 1.0).sum() == 1 and a[0] == -0.25
    with pytest.raises(LensError, match="contain 0 and 1"):
        alpha_grid(0.1, 1.0, 5)


class NoModels:
    """A context that fails if anything is loaded: skipped subjects must not compute."""

    def __getattr__(self, name):
        raise AssertionError(f"a skipped subject used ctx.{name}")


def test_imib_with_cola_is_skipped_without_computing(tiny_runs):
    cola, full = RunRef.open(tiny_runs["cola"]), RunRef.open(tiny_runs["full-rank"])
    res = IMIB(IMIBConfig(points=5)).compute(pair("cross", full, -1, cola, -1), NoModels())
    assert res.skipped and "cola" in res.skipped.lower() and "dense" in res.skipped.lower()
    assert not res.scalars and not res.arrays


def test_imib_of_a_checkpoint_with_itself_is_zero(tiny_runs):
    run = RunRef.open(tiny_runs["relora"])  # dense view = W0 + s B A, materialised
    res = IMIB(IMIBConfig(points=5)).compute(pair("cross", run, -1, run, -1), Context(SETTINGS))
    curve = res.arrays["curve"]
    assert not res.skipped and len(curve) == 5
    assert np.ptp(curve) == pytest.approx(0.0, abs=1e-9)
    assert res.scalars["imib"] == pytest.approx(0.0, abs=1e-9)
    assert res.scalars["loss_a"] == pytest.approx(res.scalars["loss_b"], abs=1e-9)


class FakeCtx:
    """ctx.load(ckpt) -> an object whose method.dense_weights gives fixed matrices per checkpoint."""

    def __init__(self, mats_by_step: dict[int, dict[str, torch.Tensor]]) -> None:
        self.mats = mats_by_step

    def load(self, ckpt, dtype=None):
        mats = self.mats[ckpt.step]
        return SimpleNamespace(model=None, method=SimpleNamespace(dense_weights=lambda model: mats))


def test_update_spectra_of_a_rank_one_update(tiny_runs):
    run = RunRef.open(tiny_runs["full-rank"])
    ck = Context(SETTINGS).load(run.checkpoints[-1], dtype=torch.float32)
    before = {n: w.clone() for n, w in ck.method.dense_weights(ck.model).items()}
    after = {n: w.clone() for n, w in before.items()}
    for w in after.values():
        w[3] *= 2  # exact in fp32: dW = e_3 W[3], rank 1
    subject = pair("consecutive", run, 0, run, -1)
    fake = FakeCtx({subject.checkpoints[0].step: before, subject.checkpoints[1].step: after})
    res = UpdateSpectra(UpdateSpectraConfig()).compute(subject, fake)
    s = res.scalars
    assert s["update_rank"] == 1 and s["update_effective_rank"] == pytest.approx(1.0)
    assert s["update_stable_rank"] == pytest.approx(1.0) and s["update_spectral_gap"] == pytest.approx(1.0)
    rows = [float(w[3].double().norm()) for w in before.values()]
    assert s["update_fro_mean"] == pytest.approx(np.mean(rows), rel=1e-9)
    assert res.info["basis"] == "dense"


@pytest.mark.parametrize("method", ["sltrain", "cola"])
def test_update_global_ratio_matches_direct_computation(tiny_runs, method):
    run = RunRef.open(tiny_runs[method])
    ctx = Context(SETTINGS)
    res = UpdateSpectra(UpdateSpectraConfig()).compute(pair("consecutive", run, 0, run, -1), ctx)
    ends = []
    for c in (run.checkpoints[0], run.checkpoints[-1]):
        ck = ctx.load(c, dtype=torch.float32)
        dense = ck.method.dense_weights(ck.model)
        ends.append(dense if dense is not None else
                    {f"{k}.{f}": t for k, fs in ck.method.factors(ck.model).items() for f, t in fs.items()})
    a, b = ends
    d2 = sum(float((b[n].double() - a[n].double()).pow(2).sum()) for n in a)
    w2 = sum(float(a[n].double().pow(2).sum()) for n in a)
    assert res.scalars["update_global_ratio"] == pytest.approx(math.sqrt(d2 / w2), rel=1e-9)
    assert res.info["basis"] == ("factors" if method == "cola" else "dense")
    assert 1 <= res.scalars["update_rank"] and math.isfinite(res.scalars["update_effective_rank"])
