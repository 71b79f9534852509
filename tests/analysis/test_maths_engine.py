"""The landscape engine: fast (vmap / loop) == the study's in-place reference, nothing mutated;
and the interpolation curve and barrier built on it (docs/study.md §2 L1, I1/I2)."""

from __future__ import annotations

import pytest
import torch
from maths_testutil import same, snapshot, tiny_batches, tiny_model

from lowrank_lens.analysis.maths import (
    interpolation_barrier,
    interpolation_curve,
    losses_along_directions,
    losses_along_directions_reference,
    mean_nll,
    prepare_batches,
    random_directions,
)
from lowrank_lens.errors import LensError

ALPHAS = torch.tensor([-0.4, -0.2, 0.0, 0.2, 0.4])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model()


def test_fast_engine_equals_reference_and_mutates_nothing(model):
    batches = tiny_batches()
    live = dict(model.named_parameters())  # params0 aliasing the live parameters: the hard case
    before = snapshot(live)
    dirs = random_directions(live, 3, seed=0, norm="filter")
    dirs_before = [snapshot(d) for d in dirs]
    fast = losses_along_directions(model, live, dirs, ALPHAS, batches, method="vmap", chunk_size=2)
    assert same(snapshot(live), before)
    loop = losses_along_directions(model, live, dirs, ALPHAS, batches, method="loop")
    ref = losses_along_directions_reference(model, live, dirs, ALPHAS, batches)
    assert same(snapshot(live), before)  # the reference restores what it perturbed in place
    assert all(same(snapshot(d), b) for d, b in zip(dirs, dirs_before, strict=True))
    assert fast.shape == (3, 5) and fast.dtype == torch.float64
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loop, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast[:, 2], torch.full((3,), fast[0, 2].item(), dtype=torch.float64))  # one alpha=0 point
    assert float((fast - fast[:, 2:3]).abs().max()) > 1e-3  # the points really differ


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_separate_params0_subset_and_direction_subset(model, method):
    """params0 need not be the model's tensors; unnamed parameters keep the model's values."""
    batches = tiny_batches(seed=4)
    live = snapshot(dict(model.named_parameters()))
    p0 = {n: t + 0.01 for n, t in live.items() if "layers.1." in n}  # a shifted subset
    p0_before = snapshot(p0)
    dirs = [{n: torch.ones_like(t) for n, t in p0.items() if n.endswith("q_proj.weight")}]
    fast = losses_along_directions(model, p0, dirs, ALPHAS, batches, method=method, chunk_size=None)
    ref = losses_along_directions_reference(model, p0, dirs, ALPHAS, batches)
    assert same(p0, p0_before) and same(snapshot(dict(model.named_parameters())), live)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(LensError, match="method"):
        losses_along_directions(model, p0, dirs, ALPHAS, batches, method="fast")
    with pytest.raises(LensError, match="absent from params0"):
        losses_along_directions(model, p0, [{"lm_head.weight": live["lm_head.weight"]}], ALPHAS, batches)


def test_loss_is_token_weighted_and_skips_padding(model):
    batches = tiny_batches(pad=False)
    ids = torch.cat([b["input_ids"] for b in batches])
    with torch.no_grad():
        hf = model(input_ids=ids, labels=ids).loss  # HF's mean over all scored tokens of one batch
        ours = mean_nll(model, prepare_batches(batches, "cpu"))
    assert float(ours) == pytest.approx(float(hf), rel=1e-5)
    padded = prepare_batches(tiny_batches(pad=True), "cpu")
    assert int((padded[0]["labels"] == -100).sum()) == 9  # row 1, positions 15..23
    with pytest.raises(LensError, match="no scored position"):
        prepare_batches([{"input_ids": ids[:, :1]}], "cpu")


def test_fp64_evaluation_is_fp64_end_to_end(model):
    """--dtype fp64 scores in fp64: the loss equals a float64 log-softmax to ~1e-15, which an fp32 cast of
    the logits (what the loss did before) misses by ~1e-8."""
    import copy

    m64 = copy.deepcopy(model).double()
    batches = prepare_batches(tiny_batches(pad=False), "cpu")
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        logits = m64(input_ids=ids).logits
        exact = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).sum()
        ours = mean_nll(m64, batches[:1]) * (ids.shape[0] * (ids.shape[1] - 1))
        via_fp32 = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(),
                                                     reduction="sum").double()
    assert float(abs(ours - exact) / exact) < 1e-14
    assert float(abs(via_fp32 - exact) / exact) > 1e-12  # the test can tell fp32 from fp64


def test_interpolation_endpoints_are_the_endpoint_losses(model):
    batches = tiny_batches(seed=2)
    a = snapshot(dict(model.named_parameters()))
    g = torch.Generator().manual_seed(3)
    b = {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in a.items()}
    alphas = torch.linspace(0, 1, 5)
    curve = interpolation_curve(model, a, b, alphas, batches)
    prepared = prepare_batches(batches, "cpu")
    with torch.no_grad():
        la, lb = float(mean_nll(model, prepared, a)), float(mean_nll(model, prepared, b))
    assert float(curve[0]) == pytest.approx(la, rel=1e-6)
    assert float(curve[-1]) == pytest.approx(lb, rel=1e-5)
    res = interpolation_barrier(curve, alphas)
    assert (res.loss_a, res.loss_b) == (float(curve[0]), float(curve[-1]))


def test_barrier_of_a_constructed_curve():
    alphas = torch.linspace(0, 1, 21)
    curve = 1 + 2 * alphas + 4 * alphas * (1 - alphas)  # L(0) = 1, L(1) = 3
    mid = interpolation_barrier(curve, alphas)  # max_a 6a - 4a^2 - 1 at a = 0.75: 1.25
    assert mid.barrier == pytest.approx(1.25) and mid.argmax_alpha == pytest.approx(0.75)
    assert mid.relative == pytest.approx(1.25 / 2)
    lin = interpolation_barrier(curve, alphas, baseline="linear")  # max_a 4a(1 - a) at a = 0.5: 1
    assert lin.barrier == pytest.approx(1.0) and lin.argmax_alpha == pytest.approx(0.5)
    line = 1 - alphas  # a straight path: no barrier over the linear baseline, but the midpoint form
    assert interpolation_barrier(line, alphas, baseline="linear").barrier == pytest.approx(0.0, abs=1e-6)
    assert interpolation_barrier(line, alphas).barrier == pytest.approx(0.45)  # L(0.05) - (1 + 0)/2
    with pytest.raises(LensError, match="alpha = 0 and alpha = 1"):
        interpolation_barrier(curve[1:], alphas[1:])


@pytest.mark.slow
def test_compiled_engine_equals_reference(model):
    """torch.compile path (compiles once, ~10-60 s on 2 cores): same numbers as the in-place oracle."""
    batches = tiny_batches(seed=5)
    live = dict(model.named_parameters())
    dirs = random_directions(live, 2, seed=1, norm="layer")
    ref = losses_along_directions_reference(model, live, dirs, ALPHAS, batches)
    fast = losses_along_directions(model, live, dirs, ALPHAS, batches, method="compiled")
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
