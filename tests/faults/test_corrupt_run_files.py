"""Corrupt or hand-edited run files (issue 11 item 13): every command that reads the file answers with the
same one line (`error: ...`, exit 2) naming it, never a traceback. A damaged data-cache entry is rebuilt.

One nano run (4 steps, checkpoints at 0, 2, 4) is trained per module and copied for each case. Readers:
`resume` (from step 2: step 4 is removed, else the run is complete and nothing is read), `analyze` with a
weight-only metric (spectra) and with a token-reading one (landscape_random: its cache key hashes the
validation rows, so a bad val_tokens.npy fails before anything is computed), and `eval-downstream`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lens_testutil import require_package, run_cli
from safetensors.torch import load_file, save_file

from lowrank_lens.errors import LensError
from lowrank_lens.runfolder.checkpoint import file_sha256
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train.logs import RunLogger

VOCAB = 512  # the nano preset's model.vocab_size


def _newest(run: Path) -> Path:
    return sorted((run / "ckpt").glob("step_*"))[-1]


# ---- faults: each edits a copy of the run in place -------------------------------------------------------
def _edit_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    path.write_text(json.dumps(edit(d)))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tensors(run: Path, edit, rehash: bool = False) -> None:
    """Rewrite the newest checkpoint's weights with `edit(state)`; `rehash` also records the new hash in
    meta.json, as a careful hand edit would: then only the shape check can notice."""
    file = _newest(run) / "model.safetensors"
    state = load_file(str(file))
    save_file(edit(state), str(file), metadata={"format": "lowrank-lens"})
    if rehash:
        _edit_json(file.parent / "meta.json", lambda m: {**m, "model_sha256": file_sha256(file)})


def _grow(state):
    key = "model.layers.0.mlp.up_proj.weight"
    return {**state, key: torch.zeros(state[key].shape[0] + 1, state[key].shape[1])}


def _drop(state):
    return {k: v for k, v in state.items() if k != "model.layers.0.mlp.up_proj.weight"}


def _state_without_optimizer(run: Path) -> None:
    file = _newest(run) / "state.pt"
    state = torch.load(file, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, file)


def _log_garbage(run: Path) -> None:
    lines = (run / "log.jsonl").read_bytes().splitlines(keepends=True)
    (run / "log.jsonl").write_bytes(lines[0] + b"\x00\xff\xfe\x80 binary garbage\n" + b"".join(lines[1:]))


def _val_rows(run: Path, edit) -> None:
    rows = np.load(run / "val_tokens.npy")
    np.save(run / "val_tokens.npy", edit(rows.copy()), allow_pickle=True)


def _set_first(value):
    def edit(rows):
        rows[0, 0] = value
        return rows
    return edit


FAULTS = {
    "config-truncated": (lambda r: _truncate(r / "config.json"), "config.json is unreadable JSON"),
    "config-not-utf8": (lambda r: (r / "config.json").write_bytes(b"\xff\xfe\x00{" + (r / "config.json").read_bytes()),
                        "config.json is unreadable JSON"),
    "config-a-list": (lambda r: (r / "config.json").write_text("[1, 2]"), "config.json holds a JSON list"),
    "config-no-method": (lambda r: _edit_json(r / "config.json", lambda d: {k: v for k, v in d.items()
                                                                           if k != "method"}),
                         "config.json is not a valid run config"),
    "config-hidden-size": (lambda r: _edit_json(r / "config.json", lambda d: {**d, "model": {
        **d["model"], "hidden_size": 2 * d["model"]["hidden_size"]}}), "does not fit the run's config.json"),
    "tensor-wrong-shape": (lambda r: _tensors(r, _grow), "model.safetensors"),
    "tensor-missing": (lambda r: _tensors(r, _drop), "model.safetensors"),
    "tensor-wrong-shape-rehashed": (lambda r: _tensors(r, _grow, rehash=True),
                                    "model.safetensors does not fit the run's config.json (wrong shape"),
    "tensor-missing-rehashed": (lambda r: _tensors(r, _drop, rehash=True),
                                "model.safetensors does not fit the run's config.json (missing"),
    "meta-a-list": (lambda r: (_newest(r) / "meta.json").write_text("[4]"), "holds a JSON list"),
    "meta-no-step": (lambda r: _edit_json(_newest(r) / "meta.json", lambda m: {k: v for k, v in m.items()
                                                                             if k != "step"}),
                     "meta.json without a valid 'step'"),
    "meta-not-utf8": (lambda r: (_newest(r) / "meta.json").write_bytes(b"\xff\xfe\x80"), "is unreadable JSON"),
    "state-no-optimizer": (_state_without_optimizer, "state.pt without optimizer"),
    "state-a-list": (lambda r: torch.save([1, 2], _newest(r) / "state.pt"), "state.pt without step, tokens"),
    "log-binary-garbage": (_log_garbage, "log.jsonl line 2 is not a log record"),
    "val-truncated": (lambda r: _truncate(r / "val_tokens.npy"), "val_tokens.npy is not a readable .npy"),
    "val-garbage": (lambda r: (r / "val_tokens.npy").write_bytes(b"\x00\xff garbage " * 40),
                    "val_tokens.npy is not a readable .npy"),
    "val-object-array": (lambda r: _val_rows(r, lambda rows: rows.astype(object)), "dtype=object"),
    "val-float-rows": (lambda r: _val_rows(r, lambda rows: rows.astype(np.float32)), "must hold integer token rows"),
    "val-id-too-large": (lambda r: _val_rows(r, _set_first(VOCAB)), f"token ids outside [-1, {VOCAB})"),
    "val-id-below-mask": (lambda r: _val_rows(r, _set_first(-5)), f"token ids outside [-1, {VOCAB})"),
}

RUN_FILES = ["config-truncated", "config-not-utf8", "config-a-list", "config-no-method", "config-hidden-size",
             "tensor-wrong-shape", "tensor-missing", "tensor-wrong-shape-rehashed", "tensor-missing-rehashed",
             "meta-a-list", "meta-no-step", "meta-not-utf8"]
READERS = {
    "resume": [*RUN_FILES, "state-no-optimizer", "state-a-list", "log-binary-garbage"],
    "analyze": RUN_FILES,
    "analyze-tokens": [f for f in FAULTS if f.startswith("val-")],
    "eval-downstream": RUN_FILES,
}


def _args(reader: str, run: Path, tmp_path: Path) -> list[str]:
    out = ["--out", str(tmp_path / "tables")]
    if reader == "resume":
        return ["resume", str(run)]
    if reader == "analyze":
        return ["analyze", str(run), "--metrics", "spectra", "--steps", "final", "--no-plots", *out]
    if reader == "analyze-tokens":
        return ["analyze", str(run), "--metrics", "landscape_random", "--steps", "final", "--no-plots", *out]
    return ["eval-downstream", str(run), "--tasks", "lens_mc", "--limit", "4", "--bootstrap-iters", "0", *out]


@pytest.mark.parametrize("reader, fault", [(r, f) for r, faults in READERS.items() for f in faults])
def test_corrupt_run_file_is_one_line(reader, fault, nano_run, tmp_path, capsys, monkeypatch):
    if reader == "eval-downstream":
        require_package("lm_eval", "pip install -e '.[eval]'")
    run = shutil.copytree(nano_run, tmp_path / "run")
    if reader == "resume":  # resume from step 2: a complete run would return before reading anything
        shutil.rmtree(run / "ckpt" / "step_000004")
    damage, fragment = FAULTS[fault]
    damage(run)
    code, err = run_cli(_args(reader, run, tmp_path), capsys, monkeypatch)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert fragment in err, err


def test_every_fault_has_a_reader():
    assert set(FAULTS) == {f for faults in READERS.values() for f in faults}


# ---- log.jsonl: the one reader (parse_log) behind read_log and truncate_after ----------------------------
def test_a_torn_last_log_line_is_dropped_but_garbage_before_it_is_an_error(nano_run, tmp_path):
    run = shutil.copytree(nano_run, tmp_path / "run")
    log = run / "log.jsonl"
    whole = read_log(run)
    log.write_bytes(log.read_bytes() + b'{"kind": "train", "step": 9, "lo')  # killed mid-write
    assert read_log(run) == whole
    RunLogger(run, enabled=True).truncate_after(2)
    assert [r["step"] for r in read_log(run)] == [r["step"] for r in whole if r["step"] <= 2]
    assert not log.read_bytes().endswith(b'"lo')
    _log_garbage(run)
    with pytest.raises(LensError, match=r"log\.jsonl line 2 is not a log record"):
        read_log(run)
    log.write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')  # a JSON line that is not a record
    with pytest.raises(LensError, match="line 2"):
        read_log(run)


# ---- the data cache: a damaged entry is rebuilt, never unpickled -----------------------------------------
def test_a_pickled_or_truncated_data_cache_entry_is_rebuilt(nano_run, shared_cache, tmp_path):
    """Rebuild, not an error: an entry's content is a pure function of its key, so rebuilding it is always
    right and asks nothing of the user (who never chose that hashed file)."""
    from lowrank_lens.data import build_data
    from lowrank_lens.presets import build_config

    cache = shutil.copytree(shared_cache, tmp_path / "cache")
    cfg = build_config("nano", "full-rank", [f"data.cache_dir={cache}"])
    folder = Path(build_data(cfg.data, VOCAB, log=lambda s: None).fingerprint["rows_dir"])
    want_val = np.load(folder / "val.npy")
    want_train = np.load(folder / "train.npy")
    marker = tmp_path / "unpickled"
    # A pickle that would create `marker` if anything ever unpickled it.
    np.save(folder / "val.npy", np.array([_Bomb(str(marker))], dtype=object), allow_pickle=True)
    _truncate(folder / "train.npy")
    messages: list[str] = []
    bundle = build_data(cfg.data, VOCAB, log=messages.append)
    assert not marker.exists()
    assert any("unreadable" in m and "rebuilding" in m for m in messages), messages
    np.testing.assert_array_equal(bundle.val_rows, want_val)
    np.testing.assert_array_equal(np.load(folder / "val.npy", allow_pickle=False), want_val)
    np.testing.assert_array_equal(np.load(folder / "train.npy", allow_pickle=False), want_train)


class _Bomb:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
