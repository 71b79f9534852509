"""Fault injection (issue 25 §2-3): checkpoints made elsewhere, and imports that are stopped.

Every shape of bad input a real checkpoint folder can have is one line naming the file and what is wrong,
never a traceback, and leaves nothing on disk; a checkpoint without a tokenizer imports (its data-free
metrics run, the others say what to pass); SIGTERM during an import removes the half-built run and exits
143; a temporary that a killed import left is removed by the next one and never read as a run.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lens_testutil import run_cli
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lowrank_lens.data.tokenizer import train_bpe
from lowrank_lens.tempdirs import OWNER_FILE

STEPS = (0, 10, 20)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three save_pretrained checkpoints (checkpoint-N/) of a tiny LLaMA, with its tokenizer."""
    root = tmp_path_factory.mktemp("elsewhere")
    texts = [f"def f(x): return x + {i}  # the quick brown fox jumps over the lazy dog. " * 4 for i in range(200)]
    train_bpe(texts, 300).save(str(root / "tokenizer.json"))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer.json"), eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64))
    series = root / "series"
    for step in STEPS:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        model.save_pretrained(series / f"checkpoint-{step}")
        tok.save_pretrained(series / f"checkpoint-{step}")
    return series


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "src"))


def _edit_config(folder: Path, **changes) -> None:
    for ck in folder.iterdir():
        cfg = json.loads((ck / "config.json").read_text())
        (ck / "config.json").write_text(json.dumps({**cfg, **changes}))


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(__file__).parent / 'PWNED-by-import'}",))


def _sharded_bin_with_a_payload(folder: Path) -> None:
    for ck in folder.iterdir():
        state = load_file(str(ck / "model.safetensors"))
        (ck / "model.safetensors").unlink()
        keys = sorted(state)
        torch.save({k: state[k] for k in keys[:5]}, ck / "pytorch_model-00001-of-00002.bin")
        with open(ck / "pytorch_model-00002-of-00002.bin", "wb") as f:
            pickle.dump({k: Evil() for k in keys[5:]}, f)
        wmap = {k: f"pytorch_model-0000{1 + (i >= 5)}-of-00002.bin" for i, k in enumerate(keys)}
        (ck / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


def _truncate(folder: Path, size: int) -> None:
    path = folder / "checkpoint-10" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:size])


def _link_out(folder: Path, name: str) -> None:
    target = folder.parent / f"outside-{name}"
    shutil.copyfile(folder / "checkpoint-0" / name, target)
    (folder / "checkpoint-0" / name).unlink()
    (folder / "checkpoint-0" / name).symlink_to(target)


def _shard_outside(folder: Path) -> None:
    ck = folder / "checkpoint-0"
    shutil.move(ck / "model.safetensors", folder.parent / "stolen.safetensors")
    wmap = {k: "../../stolen.safetensors" for k in load_file(str(folder.parent / "stolen.safetensors"))}
    (ck / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


def _index_without_metadata(folder: Path) -> None:
    for ck in folder.iterdir():
        state = load_file(str(ck / "model.safetensors"))
        shutil.move(ck / "model.safetensors", ck / "model-00001-of-00001.safetensors")
        wmap = {k: "model-00001-of-00001.safetensors" for k in state}
        (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))


INCOMPLETE = "checkpoint-10/model.safetensors is not a complete"
DAMAGE = {
    "truncated safetensors": (lambda f: _truncate(f, 3000), INCOMPLETE),
    "empty safetensors": (lambda f: _truncate(f, 0), INCOMPLETE),
    "safetensors header past the end": (lambda f: _truncate(f, 40), INCOMPLETE),
    "config.json an array": (lambda f: (f / "checkpoint-0" / "config.json").write_text("[1, 2]"),
                             "checkpoint-0/config.json is a JSON list"),
    "config.json not JSON": (lambda f: (f / "checkpoint-0" / "config.json").write_text("{"),
                             "checkpoint-0/config.json is not readable JSON"),
    "config.json not UTF-8": (lambda f: (f / "checkpoint-0" / "config.json").write_bytes(b"\xff\xfe{"),
                              "checkpoint-0/config.json is not readable JSON"),
    "vocab of 4e8": (lambda f: _edit_config(f, vocab_size=400_000_000), "vocab_size 400000000 is not a size"),
    "hidden size a string": (lambda f: _edit_config(f, hidden_size="32"), "hidden_size '32' is not a size"),
    "layers true": (lambda f: _edit_config(f, num_hidden_layers=True), "num_hidden_layers True is not a size"),
    "positions fractional": (lambda f: _edit_config(f, max_position_embeddings=64.5), "max_position_embeddings 64.5"),
    "a model past this machine's memory": (lambda f: _edit_config(f, vocab_size=1_000_000, hidden_size=65536),
                                           "needs at least"),
    "weights linked from outside": (lambda f: _link_out(f, "model.safetensors"),
                                    "checkpoint-0/model.safetensors is a symbolic link to"),
    "tokenizer linked from outside": (lambda f: _link_out(f, "tokenizer.json"),
                                      "checkpoint-0/tokenizer.json is a symbolic link to"),
    "index naming a shard outside": (_shard_outside, "names shard '../../stolen.safetensors'"),
    "index without metadata": (_index_without_metadata, "has no metadata object"),
    "sharded .bin with a pickled payload": (_sharded_bin_with_a_payload, "a weights-only load refuses"),
    "a step number past any run": (lambda f: (f / "checkpoint-20").rename(f / "checkpoint-99999999999999999999999"),
                                   "checkpoint-99999999999999999999999 says step 1e+23"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_bad_checkpoint_folder_is_one_line_naming_the_file(case, source, tmp_path, capsys, monkeypatch):
    folder = _copy(source, tmp_path)
    damage, fragment = DAMAGE[case]
    damage(folder)
    runs = tmp_path / "runs"
    code, err = run_cli(["import", str(folder), "--out", str(runs / "run"), "--rows", "8", "--seq-len", "32"],
                        capsys, monkeypatch)
    assert code == 2, err
    line = err.splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err, err
    assert fragment in line, line
    assert ".tmp-" not in line  # names the user's folders, not a temporary already removed
    assert not runs.exists() or not list(runs.iterdir())  # nothing half-written left, hidden or not
    assert not (Path(__file__).parent / "PWNED-by-import").exists()


def test_a_checkpoint_without_a_tokenizer_imports_and_its_data_free_metrics_run(source, tmp_path, capsys,
                                                                                  monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lowrank_lens")
    folder = _copy(source, tmp_path)
    for ck in folder.iterdir():
        for f in ck.glob("tokenizer*"):
            f.unlink()
    run = tmp_path / "runs" / "bare"
    code, err = run_cli(["import", str(folder), "--out", str(run)], capsys, monkeypatch)
    assert code == 0, err
    assert "without evaluation rows" in caplog.text
    assert not (run / "val_tokens.npy").exists()
    out = tmp_path / "analysis"
    code, err = run_cli(["analyze", str(run), "--metrics", "spectra,interpolation", "--steps", "all",
                         "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert "Traceback" not in err
    spectra = (out / "spectra.csv").read_text()
    assert "bare" in spectra and "skipped" not in spectra.splitlines()[0]
    interpolation = (out / "interpolation.csv").read_text()
    assert "pass --token-file ROWS.npy" in interpolation  # the reason, in the table
    # given rows, the same run's token metrics compute
    rows = np.random.default_rng(0).integers(0, 100, size=(8, 16)).astype(np.int32)
    np.save(tmp_path / "rows.npy", rows)
    code, err = run_cli(["analyze", str(run), "--metrics", "interpolation", "--steps", "all", "--out", str(out),
                         "--token-file", str(tmp_path / "rows.npy")], capsys, monkeypatch)
    assert code == 0, err
    assert "pass --token-file" not in (out / "interpolation.csv").read_text()


def test_the_rows_message_says_what_is_used(source, tmp_path, capsys, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lowrank_lens")
    rows = np.random.default_rng(0).integers(0, 100, size=(8, 16)).astype(np.int32)
    np.save(tmp_path / "rows.npy", rows)
    code, err = run_cli(["import", str(source), "--out", str(tmp_path / "a"), "--tokens", str(tmp_path / "rows.npy")],
                        capsys, monkeypatch)
    assert code == 0, err
    assert "8 of 16 tokens (as given in" in caplog.text and "not 256" not in caplog.text, caplog.text
    assert "64 tokens" not in caplog.text
    caplog.clear()
    code, err = run_cli(["import", str(source), "--out", str(tmp_path / "b"), "--rows", "4"], capsys, monkeypatch)
    assert code == 0, err
    assert "of 64 tokens (--seq-len 256 cut to the model's 64 positions)" in caplog.text


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _stale_temporary(parent: Path, name: str, pid: int) -> Path:
    tmp = parent / f".tmp-{name}-abcd1234"
    (tmp / "ckpt").mkdir(parents=True)
    import socket

    (tmp / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": ""}))
    return tmp


def test_a_temporary_a_killed_import_left_is_swept_and_never_read_as_a_run(source, tmp_path, capsys, monkeypatch,
                                                                             caplog):
    caplog.set_level(logging.INFO, logger="lowrank_lens")
    runs = tmp_path / "runs"
    code, err = run_cli(["import", str(source), "--out", str(runs / "good"), "--rows", "8", "--seq-len", "32"],
                        capsys, monkeypatch)
    assert code == 0, err
    stale = _stale_temporary(runs, "killed", _dead_pid())
    shutil.copyfile(runs / "good" / "config.json", stale / "config.json")  # as far as the killed import got
    live = _stale_temporary(runs, "running", os.getpid())  # an import still running: not touched
    code, err = run_cli(["analyze", str(runs), "--metrics", "spectra", "--steps", "final",
                         "--out", str(tmp_path / "analysis")], capsys, monkeypatch)
    assert code == 0, err
    table = (tmp_path / "analysis" / "spectra.csv").read_text()
    assert "killed" not in table and "running" not in table and "good" in table
    assert not stale.exists() and live.exists()
    _stale_temporary(runs, "killed", _dead_pid())
    code, err = run_cli(["import", str(source), "--out", str(runs / "second"), "--rows", "8", "--seq-len", "32"],
                        capsys, monkeypatch)
    assert code == 0, err
    assert "left by a process that was stopped" in caplog.text
    assert sorted(p.name for p in runs.iterdir()) == [live.name, "good", "second"]


def test_sigterm_during_an_import_removes_the_half_built_run_and_exits_143(source, tmp_path):
    folder = _copy(source, tmp_path)
    for i in range(3, 40):  # a longer series, so the signal lands while checkpoints are being placed
        shutil.copytree(folder / "checkpoint-20", folder / f"checkpoint-{i * 10}")
    runs = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lowrank_lens", "import", str(folder), "--out", str(runs / "run"),
                             "--rows", "64", "--seq-len", "64"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # wait for the first placed checkpoint
        if any(runs.glob(".tmp-run-*/ckpt/step_*/meta.json")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the import ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "stopped by signal 15" in err, err
    assert not runs.exists() or not list(runs.iterdir())
