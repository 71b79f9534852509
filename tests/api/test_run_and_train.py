"""`ll.train_run`, `ll.load_run` / `ll.Run` and `ll.analyze` on run folders: the same run folder, log and tables
as the command line's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lens_testutil import run_cli

import lowrank_lens as ll
from lowrank_lens.runfolder.log import read_log

SETS = ("train.steps=6", "train.checkpoints=2", "train.log_every=1", "train.eval_every=0", "train.device=cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> ll.Run:
    return ll.train_run(ll.run_config("nano", "full-rank", *SETS), out=tmp_path_factory.mktemp("runs"))


def test_train_returns_the_run_it_wrote(run):
    assert run.name == "nano-full-rank-seed0" and run.method == "full-rank"
    assert run.config.train.steps == 6 and run.config.model == ll.run_config("nano").model
    assert run.steps == [0, 3, 6]
    log = run.log
    assert isinstance(log, pd.DataFrame) and list(log["step"]) == [r["step"] for r in read_log(run.path, "train")]
    assert list(log["step"]) == [1, 2, 3, 4, 5, 6] and log["loss"].notna().all()


def test_a_checkpoint_loads_in_its_method_parameterization(run):
    ck = run.checkpoint()
    assert ck.step == 6 and type(ck.method).name == "full-rank"
    first = run.checkpoint(0, dtype=torch.float64)
    assert next(first.model.parameters()).dtype == torch.float64
    with pytest.raises(ll.LensError, match="no checkpoint at step 5"):
        run.checkpoint(5)


def test_analyze_of_a_run_folder_is_the_cli_table(run, tmp_path, capsys, monkeypatch):
    """The same rows as `lowrank-lens analyze RUN --out DIR`, and the second call reads the cache."""
    df = ll.analyze(run, metrics="spectra", steps=[-1], device="cpu", cache_dir=tmp_path / "cache")
    assert df.attrs["lowrank_lens"]["metrics"]["spectra"]["computed"] == 1
    again = ll.analyze(run.path, metrics="spectra", steps=[-1], device="cpu", cache_dir=tmp_path / "cache")
    assert again.attrs["lowrank_lens"]["metrics"]["spectra"]["cached"] == 1
    code, err = run_cli(["analyze", str(run.path), "--metrics", "spectra", "--steps", "final", "--device", "cpu",
                         "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--no-plots"],
                        capsys, monkeypatch)
    assert code == 0, err
    cli = pd.read_csv(tmp_path / "out" / "spectra.csv")
    pd.testing.assert_frame_equal(df.reset_index(drop=True), cli, check_dtype=False, rtol=1e-9, atol=0)
    pd.testing.assert_frame_equal(df, again)


def test_a_loaded_checkpoint_of_the_run_analyses_like_its_folder(run):
    """A checkpoint in memory (any method's parameterization) equals the folder's numbers."""
    from_folder = ll.analyze(run, metrics="spectra", steps=[-1], device="cpu")
    in_memory = ll.analyze({run.name: run.checkpoint()}, metrics="spectra", device="cpu")
    cols = [c for c in from_folder.columns if c not in ("scale", "seed", "run", "method")]
    pd.testing.assert_frame_equal(in_memory[cols], from_folder[cols], check_dtype=False, rtol=1e-12, atol=0)


def test_bad_paths_are_one_line_errors(tmp_path: Path):
    with pytest.raises(ll.LensError, match="not a run folder"):
        ll.load_run(tmp_path)
    with pytest.raises(ll.LensError, match="unknown preset"):
        ll.run_config("huge", "full-rank")


def test_tokens_replace_a_run_folders_rows(run):
    """tokens= is what a run folder is evaluated on too (and the cache keys on it), as for a model in memory."""
    other = np.random.default_rng(5).integers(0, run.config.model.vocab_size, size=(8, 16))
    options = {"landscape_random": {"directions": 2, "points": 5}}
    own = ll.analyze(run, metrics="landscape_random", steps=[-1], device="cpu", sequences=8, **options)
    given = ll.analyze(run, metrics="landscape_random", steps=[-1], device="cpu", sequences=8, tokens=other, **options)
    in_memory = ll.analyze({run.name: run.checkpoint()}, metrics="landscape_random", device="cpu", sequences=8,
                           tokens=other, **options)
    assert given["loss_centre"].item() != own["loss_centre"].item()
    assert given["loss_centre"].item() == in_memory["loss_centre"].item()


def test_compare_takes_a_run_folder_and_a_checkpoint_of_any_step(run):
    df = ll.compare(run.path, run.checkpoint(0), metrics=["update_spectra", "imib"], device="cpu", sequences=8,
                    imib={"points": 5})
    update = df[df.metric == "update_spectra"]
    assert list(update["step_from"]) == [0] and list(update["step"]) == [1] and update["update_fro_mean"].item() > 0
    assert len(df[df.metric == "imib"]) == 1
