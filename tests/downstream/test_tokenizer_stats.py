"""The run's tokenizer on another machine, and the accuracy statistics (stats.py) on known answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lowrank_lens.data.cache import default_cache_dir
from lowrank_lens.data.tokenizer import tokenizer_hash
from lowrank_lens.downstream import load_run_tokenizer
from lowrank_lens.downstream.stats import bootstrap_stderr, chance_level, closed_form_stderr, over_seeds, unit_value
from lowrank_lens.errors import LensError
from lowrank_lens.runfolder.files import load_run_config


def _moved_run(run: Path, dest: Path) -> Path:
    """A copy of the run's config whose recorded tokenizer file does not exist (another machine)."""
    dest.mkdir()
    cfg = json.loads((run / "config.json").read_text())
    cfg["data_fingerprint"]["tokenizer_file"] = "/elsewhere/tokenizers/" + Path(
        cfg["data_fingerprint"]["tokenizer_file"]).name
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_tokenizer_found_in_this_machines_cache(nano_runs: dict[str, Path], tmp_path: Path):
    moved = _moved_run(nano_runs["full-rank"], tmp_path / "moved")
    tok = load_run_tokenizer(moved)
    want = json.loads((moved / "config.json").read_text())["data_fingerprint"]
    assert tokenizer_hash(tok) == want["tokenizer_hash"] and tok.eos_token_id == want["eos_id"]


def test_missing_tokenizer_says_how_to_rebuild_and_rebuilds(nano_runs: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    run = nano_runs["full-rank"]
    moved = _moved_run(run, tmp_path / "moved")
    cache = tmp_path / "other-cache"  # this "machine" has the corpus but not the tokenizer
    shutil.copytree(default_cache_dir(load_run_config(run).data) / "corpora", cache / "corpora")
    monkeypatch.setenv("LOWRANK_LENS_CACHE", str(cache))
    with pytest.raises(LensError, match="rebuild=True"):
        load_run_tokenizer(moved)
    tok = load_run_tokenizer(moved, rebuild=True)  # re-trains the BPE, checks corpus and tokenizer hashes
    assert tokenizer_hash(tok) == json.loads((moved / "config.json").read_text())["data_fingerprint"]["tokenizer_hash"]
    assert list((cache / "tokenizers").glob("bpe-*.json"))


def test_stats_known_answers():
    a = np.array([1.0, 0.0, 1.0, 1.0])  # mean 0.75
    b = np.array([0.0, 0.0])  # mean 0
    assert unit_value([a, b], "size") == pytest.approx(3 / 6)
    assert unit_value([a, b], "equal") == pytest.approx(0.375)
    assert closed_form_stderr([a], "single") == pytest.approx(np.std(a, ddof=1) / 2)
    assert chance_level([np.array([4, 4]), np.array([2])], "equal") == pytest.approx((0.25 + 0.5) / 2)
    assert over_seeds([0.5, 0.7]) == pytest.approx((0.6, 0.1))
    # For a large sample the bootstrap agrees with the closed form (p(1-p)/n).
    x = (np.random.default_rng(1).random(2000) < 0.3).astype(float)
    boot = bootstrap_stderr([x], "single", iters=400)
    assert boot == pytest.approx(closed_form_stderr([x], "single"), rel=0.15)
    assert bootstrap_stderr([x], "single", iters=400) == boot  # seeded: reproducible
