"""Known answers of the activation_similarity and curvature metrics on the tiny runs.

activation_similarity: a checkpoint against itself (CKA 1, cosine 1, L2 0 at every hidden state); padding
masked vs unmasked (masked on tail-padded rows == unmasked on the rows cut before the padding; both agree
without padding); max_tokens == fewer sequences. curvature: on one small tensor, Lanczos and power
iteration against the exact Hessian of torch.autograd.functional.hessian, and the Hutchinson CI around
its trace; the parameter sets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lowrank_lens.analysis.context import Context, EvalSettings
from lowrank_lens.analysis.maths.loss import mean_nll
from lowrank_lens.analysis.metrics.activation_similarity import ActivationSimilarity, ActivationSimilarityConfig
from lowrank_lens.analysis.metrics.curvature import Curvature, CurvatureConfig, first_sequences, hessian_params
from lowrank_lens.analysis.subjects import RunRef, Subject
from lowrank_lens.errors import LensError

SMALL = {"sequences": 8, "batch_size": 4}


def _reference_pair(tiny_runs, method: str, step: int = -1) -> Subject:
    run, ref = RunRef.open(tiny_runs[method]), RunRef.open(tiny_runs["full-rank"])
    c = run.checkpoints[step]
    return Subject("reference", "pair", (c, ref.at(c.step)), (run, ref))


def _similarity(subject: Subject, token_file: str = "", sequences: int = 8, **cfg):
    ctx = Context(EvalSettings(sequences=sequences, batch_size=4, token_file=token_file))
    return ActivationSimilarity(ActivationSimilarityConfig(**cfg)).compute(subject, ctx)


def test_a_checkpoint_against_itself_is_identical_at_every_hidden_state(tiny_runs, tmp_path):
    run = RunRef.open(tiny_runs["sltrain"])  # a factorised parameterization, run natively
    c = run.checkpoints[-1]
    res = _similarity(Subject("reference", "pair", (c, c), (run, run)))
    per, keys = res.arrays["per_layer"], res.info["keys"]
    assert per.shape == (3, 6) and res.info["n_hidden_states"] == 3  # nano: embedding + 2 blocks
    np.testing.assert_allclose(per[:, keys.index("cka")], 1.0, rtol=1e-9)
    np.testing.assert_allclose(per[:, keys.index("cosine")], 1.0, rtol=1e-9)
    assert np.all(per[:, keys.index("mean_l2")] == 0) and np.all(per[:, keys.index("relative_l2")] == 0)
    np.testing.assert_array_equal(per[:, keys.index("baseline_norm")], per[:, keys.index("target_norm")])
    assert res.scalars["cka_mean"] == pytest.approx(1.0) and res.scalars["l2_last"] == 0.0
    # a different method is not identical to the reference, and the figures render
    other = [_similarity(_reference_pair(tiny_runs, "galore", i), max_tokens=64) for i in (1, -1)]
    assert 0 < other[-1].scalars["rel_l2_mean"] and other[-1].scalars["cka_last"] < 1
    files = ActivationSimilarity(ActivationSimilarityConfig()).plot([res, *other], tmp_path)
    assert len(files) == 7 and all(f.is_file() for f in files)


def test_padding_is_masked_unless_unmasked(tiny_runs, tmp_path):
    subject = _reference_pair(tiny_runs, "galore")
    rows = np.load(tiny_runs["galore"] / "val_tokens.npy")[:8]
    assert (rows >= 0).all(), "the tiny runs' validation rows are packed (no padding)"
    T = rows.shape[1]
    cut = T // 2
    padded = rows.copy()
    padded[:, cut:] = -1
    files = {}
    for name, arr in (("full", rows), ("padded", padded), ("short", rows[:, :cut])):
        files[name] = str(tmp_path / f"{name}.npy")
        np.save(files[name], arr)
    masked = _similarity(subject, files["padded"])
    unmasked = _similarity(subject, files["padded"], unmasked=True)
    short = _similarity(subject, files["short"], unmasked=True)
    assert masked.info["n_tokens"] == 8 * cut and unmasked.info["n_tokens"] == 8 * T
    # causal attention: the real prefix's hidden states do not see the padding after it
    np.testing.assert_allclose(masked.arrays["per_layer"], short.arrays["per_layer"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(masked.arrays["per_layer"], unmasked.arrays["per_layer"], rtol=1e-3)
    # without padding, both agree exactly
    a, b = _similarity(subject, files["full"]), _similarity(subject, files["full"], unmasked=True)
    np.testing.assert_array_equal(a.arrays["per_layer"], b.arrays["per_layer"])
    # max_tokens counts the first positions: 3 full rows == the first 3 sequences
    capped = _similarity(subject, files["full"], max_tokens=3 * T)
    three = _similarity(subject, files["full"], sequences=3)
    assert capped.info["n_tokens"] == three.info["n_tokens"] == 3 * T
    np.testing.assert_allclose(capped.arrays["per_layer"], three.arrays["per_layer"], rtol=1e-12)


def _exact_hessian(model: torch.nn.Module, params0: dict[str, torch.Tensor], batches) -> torch.Tensor:
    """d^2 L / d theta^2 of the same token-weighted NLL, for one parameter tensor, by autograd."""
    ((name, p0),) = params0.items()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        return mean_nll(model, batches, {name: flat.view_as(p0)})

    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(loss, p0.reshape(-1).clone())


def test_curvature_matches_the_exact_hessian_of_one_tensor(tiny_runs, tmp_path):
    run = RunRef.open(tiny_runs["full-rank"])
    c = run.checkpoints[-1]
    subject = Subject("checkpoint", "checkpoint", (c,), (run,))
    ctx = Context(EvalSettings(**SMALL))
    one = {"include": r"^model\.layers\.1\.post_attention_layernorm\.weight$", "dtype": "fp64"}
    lz = Curvature(CurvatureConfig(lanczos_iters=24, hutchinson_probes=60, **one)).compute(subject, ctx)
    pw = Curvature(CurvatureConfig(eigen_method="power", power_iters=200, power_tol=1e-7, hutchinson_probes=2,
                                   **one)).compute(subject, ctx)
    model = ctx.load(c, dtype=torch.float64).model
    params0 = hessian_params(model, include=one["include"])
    H = _exact_hessian(model, params0, ctx.batches(run))
    eig = torch.linalg.eigvalsh(H)
    assert lz.info["n_params"] == H.shape[0] == 64 and lz.info["compute_dtype"] == "torch.float64"
    assert lz.scalars["top_eigenvalue"] == pytest.approx(float(eig[-1]), rel=1e-6)
    assert lz.arrays["ritz_values"].shape == (24,) and lz.scalars["bottom_eigenvalue"] >= float(eig[0]) - 1e-9
    largest_magnitude = float(eig[eig.abs().argmax()])
    assert pw.info["power_converged"] and pw.scalars["top_eigenvalue"] == pytest.approx(largest_magnitude, rel=1e-4)
    assert largest_magnitude == float(eig[-1])  # so here Lanczos and power iteration agree
    assert pw.scalars["top_eigenvalue"] == pytest.approx(lz.scalars["top_eigenvalue"], rel=1e-4)
    trace = float(torch.trace(H))
    assert lz.scalars["trace_ci_low"] < trace < lz.scalars["trace_ci_high"]
    assert lz.scalars["trace_stderr"] > 0 and lz.arrays["trace_samples"].shape == (60,)
    files = Curvature(CurvatureConfig()).plot([lz, pw], tmp_path)
    assert all(f.is_file() for f in files)


def test_curvature_parameter_sets_and_options(tiny_runs):
    ctx = Context(EvalSettings(**SMALL))
    run = RunRef.open(tiny_runs["relora"])
    model = ctx.load(run.checkpoints[-1]).model
    every, trainable = hessian_params(model, "all"), hessian_params(model, "trainable")
    frozen = set(every) - set(trainable)
    assert frozen and all(not dict(model.named_parameters())[n].requires_grad for n in frozen)
    assert set(hessian_params(model, "all", "lora_")) < set(trainable)
    with pytest.raises(LensError):
        hessian_params(model, "all", "no-such-parameter")
    with pytest.raises(LensError):
        CurvatureConfig(eigen_method="arnoldi")
    batches = ctx.batches(run)  # 2 batches of 4 rows
    cut = first_sequences(batches, 6)
    assert [b["input_ids"].shape[0] for b in cut] == [4, 2] and first_sequences(batches, 0) is batches


def test_unmasked_hidden_states_use_the_attention_mask_like_the_study():
    """The study passes the tokenizer's attention mask, so padding positions attend to real tokens only;
    our batches carry labels with -100 at padding instead. Without the mask (before), the padding
    positions' states differed from the study's; real positions are the same either way."""
    from maths_testutil import TINY, tiny_model

    from lowrank_lens.analysis.maths.loss import prepare_batches
    from lowrank_lens.analysis.metrics.activation_similarity import _hidden_states
    from lowrank_lens.data.rows import to_model_inputs

    model = tiny_model().eval()
    rows = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 16)).astype(np.int32)
    rows[1, 9:] = -1  # right padding
    (batch,) = prepare_batches([to_model_inputs(rows, pad_id=0)], "cpu")
    real = torch.from_numpy(rows != -1).long()
    with torch.no_grad():
        ours = _hidden_states(model, batch)
        study = model(input_ids=batch["input_ids"], attention_mask=real, output_hidden_states=True).hidden_states
        no_mask = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states
    for a, b, c in zip(ours, study, no_mask, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a[0], c[0])  # an unpadded row: no difference
        torch.testing.assert_close(a[1, :9], c[1, :9])  # real positions: causal, the mask changes nothing
    assert not torch.allclose(ours[-1][1, 9:], no_mask[-1][1, 9:])  # the padding positions it does change
