"""`lowrank-lens import` (imports/): series of HF checkpoint folders and hub revisions become run directories
whose weights are the source files themselves (hard links), that load exactly as transformers loads them,
and whose target matrices are each architecture's projections as out x in; bad sources fail in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from series_util import MAKERS, STEPS, write_series
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM

from lowrank_lens.analysis.subjects import RunRef
from lowrank_lens.cli import report as report_command
from lowrank_lens.errors import LensError
from lowrank_lens.imports import ImportOptions, import_series
from lowrank_lens.model.architectures import block_index
from lowrank_lens.runfolder.checkpoint import complete_checkpoints, read_meta
from lowrank_lens.runfolder.loading import load_checkpoint

QUICK = dict(seq_len=32, rows=8)
# (module suffix, out x in) of block 0's targets at hidden 32 (GPT-2's MLP is 4 x hidden, the others' 64)
TARGETS = {
    "gpt2": {"attn.c_attn": (96, 32), "attn.c_proj": (32, 32), "mlp.c_fc": (128, 32), "mlp.c_proj": (32, 128)},
    "gpt_neox": {"attention.query_key_value": (96, 32), "attention.dense": (32, 32), "mlp.dense_h_to_4h": (64, 32),
                 "mlp.dense_4h_to_h": (32, 64)},
    "llama": {"self_attn.q_proj": (32, 32), "self_attn.k_proj": (32, 32), "self_attn.v_proj": (32, 32),
              "self_attn.o_proj": (32, 32), "mlp.gate_proj": (64, 32), "mlp.up_proj": (64, 32),
              "mlp.down_proj": (32, 64)},
}


@pytest.mark.parametrize("arch", list(MAKERS))
def test_a_series_is_linked_not_copied_and_loads_as_transformers_loads_it(arch, series, tmp_path):
    run = import_series(str(series[arch]), tmp_path / "run", ImportOptions(label=f"{arch}-elsewhere", **QUICK))
    ckpts = complete_checkpoints(run)
    assert [s for s, _ in ckpts] == list(STEPS)
    rows = torch.as_tensor(np.load(run / "val_tokens.npy")[:2]).clamp(min=0).long()
    for step, ck in ckpts:
        src = series[arch] / f"checkpoint-{step}" / "model.safetensors"
        assert os.stat(ck / "model.safetensors").st_ino == os.stat(src).st_ino  # the same file, not a copy
        meta = read_meta(ck)
        assert meta["weights"] == f"hard link to {src.resolve()}" and meta["val"]["val_ppl"] > 1
        ours = load_checkpoint(ck).model
        theirs = AutoModelForCausalLM.from_pretrained(str(src.parent)).eval()
        with torch.no_grad():  # eager attention here, transformers' default (sdpa) there: rounding only
            torch.testing.assert_close(ours(input_ids=rows).logits, theirs(input_ids=rows).logits,
                                       rtol=1e-4, atol=1e-5)
    ref = RunRef.open(run)
    assert ref.method == f"{arch}-elsewhere" and ref.steps() == list(STEPS) and not ref.is_baseline


@pytest.mark.parametrize("arch", list(MAKERS))
def test_target_matrices_are_each_architectures_projections_out_by_in(arch, series, tmp_path):
    run = import_series(str(series[arch]), tmp_path / "run", ImportOptions(**QUICK))
    ck = load_checkpoint(complete_checkpoints(run)[-1][1])
    dense = ck.method.dense_weights(ck.model)
    assert len(dense) == 2 * len(TARGETS[arch]) and {block_index(n) for n in dense} == {0, 1}
    for suffix, shape in TARGETS[arch].items():
        name = next(n for n in dense if n.endswith(suffix) and block_index(n) == 0)
        assert tuple(dense[name].shape) == shape, name
        stored = ck.model.get_submodule(name).weight
        expected = stored.T if arch == "gpt2" else stored  # GPT-2's Conv1D stores in x out
        assert torch.equal(dense[name], expected)


def test_gpt_neox_files_keep_their_saved_names_and_are_renamed_when_read(series, tmp_path):
    """transformers 5 saves GPT-NeoX's head as embed_out.weight but names it lm_head.weight: the import finds
    the pair by content and records it, so the file is still linked, not rewritten."""
    run = import_series(str(series["gpt_neox"]), tmp_path / "run", ImportOptions(**QUICK))
    import json

    method_cfg = json.loads((run / "config.json").read_text())["method_cfg"]
    assert method_cfg["renames"] == ["embed_out.weight=lm_head.weight"]


def _hub_cache(tmp_path, folder_of_step) -> tuple:
    """A local folder laid out as huggingface_hub's cache: refs/<revision> -> snapshots/<commit>/."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-gpt2"
    for step in STEPS:
        commit = hashlib.sha1(str(step).encode()).hexdigest()
        shutil.copytree(folder_of_step(step), repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
    return cache, repo


def test_hub_revisions_import_from_the_local_hub_cache_offline(series, tmp_path, network_attempts):
    cache, repo = _hub_cache(tmp_path, lambda s: series["gpt2"] / f"checkpoint-{s}")
    revisions = tuple(f"step{s}" for s in STEPS)
    run = import_series("someone/tiny-gpt2", tmp_path / "run",
                        ImportOptions(revisions=revisions, hub_cache=str(cache), **QUICK))
    ckpts = complete_checkpoints(run)
    assert [s for s, _ in ckpts] == list(STEPS)
    assert all(str(repo) in read_meta(ck)["weights"] for _, ck in ckpts)
    assert read_meta(ckpts[-1][1])["imported_from"] == "hub someone/tiny-gpt2@step20"
    with pytest.raises(LensError, match=r"cannot fetch someone/tiny-gpt2@step30 .*offline") as e:
        import_series("someone/tiny-gpt2", tmp_path / "run2",
                      ImportOptions(revisions=("step30",), hub_cache=str(cache), **QUICK))
    assert "\n" not in str(e.value) and not (tmp_path / "run2").exists()
    assert network_attempts == []


def test_an_unknown_architecture_needs_its_target_patterns(tmp_path, tokenizer):
    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                   num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128))
    src = write_series(tmp_path / "opt", opt, tokenizer, steps=(5,))
    with pytest.raises(LensError, match=r"architecture 'opt' is not one lowrank-lens knows .*--targets"):
        import_series(str(src), tmp_path / "run", ImportOptions(**QUICK))
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-*"))
    targets = ("*.self_attn.q_proj", "*.self_attn.out_proj", "*.fc1", "*.fc2")
    run = import_series(str(src), tmp_path / "run", ImportOptions(targets=targets, **QUICK))
    ck = load_checkpoint(complete_checkpoints(run)[-1][1])
    assert len(ck.method.dense_weights(ck.model)) == 4 * 2


def test_bad_sources_fail_in_one_line_and_leave_nothing(series, tmp_path):
    cases = []
    bare = tmp_path / "bare"  # weights without a tokenizer: a text --tokens file cannot be tokenized
    shutil.copytree(series["gpt2"] / "checkpoint-0", bare / "checkpoint-0",
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    (tmp_path / "text.txt").write_text("some text\n\nmore text\n")
    cases.append((str(bare), {"tokens": str(tmp_path / "text.txt")}, "has no tokenizer files"))
    unnamed = tmp_path / "unnamed"
    shutil.copytree(series["gpt2"] / "checkpoint-0", unnamed / "final")
    cases.append((str(unnamed), {}, "cannot tell the training step of final"))
    cases.append((str(tmp_path / "missing"), {}, "does not exist"))
    cases.append((str(series["gpt2"]), {"layout": "nope"}, "--layout 'nope' is not one of"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for source, kw, fragment in cases:
        with pytest.raises(LensError, match=fragment) as e:
            import_series(source, tmp_path / "run", ImportOptions(**{**QUICK, **kw}))
        assert "\n" not in str(e.value), str(e.value)
    with pytest.raises(LensError, match="already exists and is not empty"):
        import_series(str(series["gpt2"]), tmp_path / "full", ImportOptions(**QUICK))
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-*"))
    # with its rows given, the tokenizer-less checkpoint imports
    run = import_series(str(series["gpt2"]), tmp_path / "with-tok", ImportOptions(**QUICK))
    rows = tmp_path / "rows.npy"
    shutil.copyfile(run / "val_tokens.npy", rows)
    bare_run = import_series(str(bare), tmp_path / "bare-run", ImportOptions(tokens=str(rows), **QUICK))
    assert np.array_equal(np.load(bare_run / "val_tokens.npy"), np.load(rows))


def test_downstream_evaluation_reads_an_imported_run_with_its_own_tokenizer(series, tmp_path):
    from lens_testutil import require_package

    require_package("lm_eval", "pip install -e '.[eval]'")
    from lowrank_lens.downstream.evaluate import evaluate_downstream

    run = import_series(str(series["gpt2"]), tmp_path / "run", ImportOptions(label="gpt2-elsewhere", **QUICK))
    rows = evaluate_downstream([str(run)], ["lens_mc"], "final", [0], limit=8)
    assert rows and rows[0]["method"] == "gpt2-elsewhere" and rows[0]["step"] == STEPS[-1]
    assert 0.0 <= rows[0]["acc"] <= 1.0 and rows[0]["n"] == 8


@pytest.mark.slow
def test_every_metric_runs_on_each_architecture(series, tmp_path):
    """LLaMA (the baseline here), GPT-NeoX and GPT-2, imported at one scale and seed: every metric computes
    on each; activation similarity compares each block's hidden states with the baseline's (2 blocks: 3
    states); IMIB between two architectures is skipped with its reason."""
    from lowrank_lens.analysis.context import EvalSettings
    from lowrank_lens.analysis.metrics import metric_names
    from lowrank_lens.analysis.runner import analyze

    runs = [import_series(str(series[a]), tmp_path / a, ImportOptions(label=a, scale="tiny", baseline=a == "llama",
                                                                     **QUICK)) for a in MAKERS]
    quick = ["landscape_random.directions=2", "landscape_random.points=5", "landscape_pca.k=2",
             "landscape_pca.points=5", "trajectory_pca.points=5", "interpolation.points=5", "imib.points=5",
             "curvature.lanczos_iters=4", "curvature.hutchinson_probes=3"]
    out = analyze(runs, None, None, None, quick, EvalSettings(sequences=4, batch_size=4), tmp_path / "tables",
                  plots=False)
    for name in metric_names():
        done = {r.subject["method"] for r in out[name].results if not r.skipped}
        if name == "imib":
            skipped = [r.skipped for r in out[name].results]
            assert skipped and all("different parameters" in s for s in skipped), skipped
        elif name == "activation_similarity":
            assert done == {"gpt2", "gpt_neox"}
            assert all(r.arrays["per_layer"].shape[0] == 3 for r in out[name].results)
        else:
            assert done == set(MAKERS), (name, done)


def test_imported_series_are_report_sources(series, tmp_path):
    """Two imported series side by side (`lowrank-lens report A B --out DIR`): each is a source of kind
    'import', labelled by its folder, and its runs appear in the page as '<label>/<run>'."""
    a = import_series(str(series["gpt2"]), tmp_path / "gpt2-elsewhere", ImportOptions(label="gpt2", **QUICK))
    b = import_series(str(series["llama"]), tmp_path / "llama-elsewhere", ImportOptions(label="llama", **QUICK))
    report_command([a, b], tmp_path / "side-by-side")
    listing = json.loads((tmp_path / "side-by-side" / "findings" / "findings.json").read_text())["sources"]
    assert [(s["label"], s["kind"]) for s in listing] == [("gpt2-elsewhere", "import"), ("llama-elsewhere", "import")]
    page = (tmp_path / "side-by-side" / "report" / "index.html").read_text()
    assert "gpt2-elsewhere/gpt2-elsewhere" in page and "llama-elsewhere/llama-elsewhere" in page
    assert "No method and scale appear in two sources" in page  # different models: nothing to subtract
