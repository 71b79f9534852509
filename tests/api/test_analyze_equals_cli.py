"""`ll.analyze` / `ll.compare` on models in memory give the numbers of the CLI's tables on the same weights:
the models are saved, imported (`lowrank-lens import`) and analysed by the command line, then analysed from
memory, metric by metric. The models are built with eager attention, the implementation the reader of an
imported run loads (another one, e.g. SDPA, rounds differently in the last bits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lens_testutil import run_cli
from transformers import LlamaConfig, LlamaForCausalLM

import lowrank_lens as ll
from lowrank_lens.analysis.metrics import metric_names

QUICK = {"landscape_random": {"directions": 2, "points": 5}, "landscape_pca": {"k": 2, "points": 5},
         "trajectory_pca": {"components": 2, "points": 5}, "interpolation": {"points": 5}, "imib": {"points": 5},
         "curvature": {"lanczos_iters": 4, "hutchinson_probes": 2}}
SETTINGS = {"sequences": 8, "batch_size": 4, "device": "cpu"}
NAMES = ("run", "method", "seed", "kind", "step", "step_from", "other_run", "other_method")


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=64, attn_implementation="eager")
    return LlamaForCausalLM(cfg)


def nudged(model: LlamaForCausalLM, seed: int) -> LlamaForCausalLM:
    """A copy a little further along (a later checkpoint)."""
    out = tiny_llama(0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (_, p), (_, q) in zip(out.named_parameters(), model.named_parameters(), strict=True):
            p.copy_(q + 0.01 * torch.randn(q.shape, generator=g))
    return out


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("api")
    a0 = tiny_llama(0)
    series = [a0, nudged(a0, 1)]
    series.append(nudged(series[1], 2))
    other = tiny_llama(7)
    rows = np.random.default_rng(0).integers(0, 96, size=(8, 16)).astype(np.int64)
    rows[0, -3:] = -1  # a masked tail, as padded rows have
    np.save(root / "rows.npy", rows)
    for i, m in enumerate(series):
        m.save_pretrained(root / "series_a" / f"checkpoint-{i}")
    other.save_pretrained(root / "series_b" / "checkpoint-0")
    return {"root": root, "series": series, "other": other, "rows": rows}


def cli_tables(both, capsys, monkeypatch) -> Path:
    root: Path = both["root"]
    out = root / "cli"
    if not out.exists():
        for name, extra in (("a", []), ("b", ["--baseline"])):
            code, err = run_cli(["import", str(root / f"series_{name}"), "--out", str(root / "runs" / name),
                                 "--method", name, "--tokens", str(root / "rows.npy"), *extra], capsys, monkeypatch)
            assert code == 0, err
        sets = [a for m, fields in QUICK.items() for k, v in fields.items() for a in ("--set", f"{m}.{k}={v}")]
        code, err = run_cli(["analyze", str(root / "runs" / "a"), str(root / "runs" / "b"), "--sequences", "8",
                             "--batch-size", "4", "--device", "cpu", "--no-plots", "--out", str(out), *sets],
                            capsys, monkeypatch)
        assert code == 0, err
    return out


def numbers(df: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by what names them, only their numeric columns (the scale label differs: imported vs
    memory)."""
    df = df.dropna(axis=1, how="all")
    keys = [c for c in NAMES if c in df.columns]
    df = df.sort_values(keys).reset_index(drop=True)
    return df[keys + [c for c in df.columns if c not in NAMES and pd.api.types.is_numeric_dtype(df[c])]]


@pytest.fixture(scope="module")
def from_memory(both) -> pd.DataFrame:
    models = {"a": both["series"], "b": both["other"]}
    return ll.analyze(models, tokens=both["rows"], reference="b", **SETTINGS, **QUICK)


@pytest.mark.parametrize("metric", metric_names())
def test_analyze_in_memory_equals_the_cli_table(metric, both, from_memory, capsys, monkeypatch):
    cli = pd.read_csv(cli_tables(both, capsys, monkeypatch) / f"{metric}.csv")
    mine = from_memory[from_memory["metric"] == metric]
    assert len(mine) == len(cli) > 0
    a, b = numbers(mine), numbers(cli)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9, atol=0)


def test_models_are_left_as_they_were(both):
    model = both["series"][0]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    df = ll.analyze(model, metrics=["landscape_random", "curvature"], tokens=both["rows"], **SETTINGS, **QUICK)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    provenance = df.attrs["lowrank_lens"]
    assert provenance["metrics"]["landscape_random"]["config"]["directions"] == 2
    assert provenance["eval"]["sequences"] == 8 and provenance["version"] == ll.__version__


def test_compare_pairs_two_models_like_the_cli(both, capsys, monkeypatch):
    """compare(a, b): imib and activation similarity of a against b, interpolation a -> b."""
    a, b = both["series"][0], both["other"]
    df = ll.compare(a, b, metrics=["imib", "activation_similarity", "interpolation"], tokens=both["rows"],
                    **SETTINGS, **QUICK)
    assert sorted(df["metric"]) == ["activation_similarity", "imib", "interpolation"]
    cli = pd.read_csv(cli_tables(both, capsys, monkeypatch) / "imib.csv")
    at0 = cli[cli["step"] == 0]
    mine = df[df["metric"] == "imib"]
    assert np.allclose(mine["imib"].to_numpy(), at0["imib"].to_numpy(), rtol=1e-9, atol=0)


def test_bad_inputs_are_one_line_errors(both):
    with pytest.raises(ll.LensError, match="tokens"):
        ll.analyze(both["other"], metrics="landscape_random", tokens=np.full((2, 4), 500), **SETTINGS)
    with pytest.raises(ll.LensError, match="not a Hugging Face causal LM"):
        ll.analyze(torch.nn.Linear(3, 3), metrics="spectra")
    with pytest.raises(ll.LensError, match="unknown metric"):
        ll.analyze(both["other"], metrics="spectra", nonsense={"x": 1})
    with pytest.raises(ll.LensError, match="compare takes metrics of two models"):
        ll.compare(both["other"], both["other"], metrics="spectra")
