"""A model in memory through lm-evaluation-harness (evaluate_model): the rows of its run folder's evaluation,
uncached, with the model, its tokenizer and the global random streams left as they were (a training callback
calls it between steps)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from lens_testutil import one_torch_thread

from lowrank_lens.downstream import evaluate_downstream, evaluate_model, load_run_tokenizer
from lowrank_lens.errors import LensError
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.loading import load_checkpoint, resolve_checkpoint
from lowrank_lens.train import train

SETTINGS = {"limit": 6, "seeds": (0, 1), "bootstrap_iters": 50}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One nano full-rank run (8 steps, its final checkpoint and tokenizer)."""
    with one_torch_thread():
        return train(build_config("nano", "full-rank", ["train.steps=8", "train.checkpoints=1"]),
                     tmp_path_factory.mktemp("memory-run"))


def test_model_in_memory_equals_its_run_folder_and_is_left_as_it_was(run: Path):
    from_folder = evaluate_downstream([run], ["lens_mc"], device="cpu", **SETTINGS)
    ck = load_checkpoint(resolve_checkpoint(run, "final"))
    model, tok = ck.model, load_run_tokenizer(run)
    model.train()
    model.model.layers[0].eval()  # mixed modes: each module's own is put back
    modes = {n: m.training for n, m in model.named_modules()}
    params = {n: (p.data_ptr(), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    tok_before = (tok.pad_token, tok.model_max_length)
    cached = sorted((run / "analysis").rglob("*"))

    random.seed(2024)  # a state no evaluation seed gives
    np.random.seed(2024)
    torch.manual_seed(2024)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    expected = random.random(), np.random.rand(), torch.rand(3)  # the stream without an evaluation
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])

    rows = evaluate_model(model, tok, "lens_mc", name="full-rank", step=8, max_length=ck.cfg.model.max_seq_len,
                          **SETTINGS)

    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, p in model.named_parameters():
        ptr, value, grad = params[n]
        assert p.data_ptr() == ptr and p.requires_grad == grad and torch.equal(p.detach(), value), n
    assert (tok.pad_token, tok.model_max_length) == tok_before  # lm-eval set up a copy
    assert sorted((run / "analysis").rglob("*")) == cached  # nothing cached or written

    assert len(rows) == len(from_folder) == 1
    mem, folder = rows[0], from_folder[0]
    assert list(mem) == list(folder)  # the same columns in the same order
    assert (mem["run"], mem["method"], mem["scale"], mem["seed"], mem["step"]) == ("full-rank", "full-rank",
                                                                                   "memory", 0, 8)
    assert mem["n"] == 6 and mem["n_seeds"] == 2 and mem["eval_seeds"] == "0,1"
    assert 0.0 <= mem["acc"] <= 1.0 and mem["chance"] == pytest.approx(0.25)
    for column in ("acc", "acc_norm", "acc_std_seeds", "acc_norm_std_seeds", "acc_stderr", "acc_se_boot",
                   "acc_norm_stderr", "acc_norm_se_boot", "chance", "n", "limit", "num_fewshot", "lm_eval"):
        assert mem[column] == folder[column], column
    assert {k: v for k, v in mem.items() if k not in ("run", "method", "scale", "seed")} == \
        {k: v for k, v in folder.items() if k not in ("run", "method", "scale", "seed")}


def test_bad_input_is_one_line_naming_the_fix(run: Path):
    tok = load_run_tokenizer(run)
    with pytest.raises(LensError, match=r"expects a Hugging Face causal LM .*got Linear; pass one") as e:
        evaluate_model(torch.nn.Linear(2, 2), tok)
    assert "\n" not in str(e.value)
    model = load_checkpoint(resolve_checkpoint(run, "final")).model
    with pytest.raises(LensError, match=r"downstream.seeds 'a,b': pass comma-separated non-negative integers"):
        evaluate_model(model, tok, seeds="a,b")


def test_the_lens_evaluates_downstream_on_the_live_model(run: Path, tmp_path: Path):
    """LensCallback(downstream=...) gives evaluate_model's rows at each observed step, and ll.evaluate of the
    model in memory the same rows."""
    import lowrank_lens as ll

    ck = load_checkpoint(resolve_checkpoint(run))
    tok = load_run_tokenizer(run)
    lens = ll.LensCallback(("spectra",), every=1, sinks=(), device="cpu", sequences=4, batch_size=4,
                           downstream="lens_mc", tokenizer=tok, downstream_options={"limit": 6})
    with one_torch_thread():
        df = lens.observe(ck, step=8)
        direct = ll.evaluate(ck, "lens_mc", tokenizer=tok, limit=6, name="live", step=8)
    rows = df[df.metric == "downstream"].dropna(axis=1, how="all").reset_index(drop=True)
    assert list(rows["task"]) == list(direct["task"]) and np.allclose(rows["acc"], direct["acc"], rtol=0, atol=0)
    assert "lens/downstream/lens_mc/acc" in lens.scalars(df.to_dict("records"))
    with pytest.raises(LensError, match="needs the model's tokenizer"):
        ll.LensCallback(("spectra",), sinks=(), downstream="lens_mc")
