"""Bad command-line arguments (issue 11 item 16) are one line (`error: ...`, exit 2) naming the option,
before any work; `analyze --steps` selecting nothing is an error, not a silent success; `--cache-dir` keeps
analyze's and eval-downstream's caches out of read-only run folders; task YAMLs are flagged as code in
`eval-downstream --help` (item 17).

Read-only folders: the tests run as root, for whom mode bits (chmod 0o555) do not stop a write, so they are
no test. The real file-system faults used here are a path under a regular file and a file where a cache
folder must be; a folder this user may not write to (a read-only mount, or mode bits for a non-root user) is
simulated by making os.access deny that one path, which is the kernel check the CLI asks.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lens_testutil import require_package, run_cli

NANO = ["--preset", "nano", "--steps", "4", "--set", "train.checkpoints=2"]


def _one_line(code, err, fragment):
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert fragment in err, err


# (args with RUN = the nano run, TMP = this test's folder, FILE = an existing regular file, RO = a folder
#  os.access says is not writable; the fragment the one line must hold; whether torch sees no CUDA)
ROWS = [
    # --device: one parser (runfolder.loading.parse_device) for every command
    (["analyze", "RUN", "--device", "tpu"], "--device 'tpu' is not one of auto, cpu, cuda, cuda:N", False),
    (["eval-downstream", "RUN", "--device", "tpu"], "--device 'tpu' is not one of auto, cpu, cuda, cuda:N", False),
    (["train", *NANO, "--device", "tpu", "--out", "TMP/runs"], "'tpu'", False),
    (["analyze", "RUN", "--device", "cuda"], "--device 'cuda' asks for a GPU", True),
    (["analyze", "RUN", "--device", "cuda:1"], "--device 'cuda:1' asks for a GPU", True),
    (["eval-downstream", "RUN", "--device", "cuda"], "--device 'cuda' asks for a GPU", True),
    (["train", *NANO, "--device", "cuda", "--out", "TMP/runs"], "--device 'cuda' asks for a GPU", True),
    # eval-downstream numbers
    (["eval-downstream", "RUN", "--seeds", "abc"], "--seeds 'abc'", False),
    (["eval-downstream", "RUN", "--seeds", "0,x"], "--seeds '0,x'", False),
    (["eval-downstream", "RUN", "--seeds", ","], "--seeds ','", False),
    (["eval-downstream", "RUN", "--step", "abc"], "--step 'abc'", False),
    (["eval-downstream", "RUN", "--step", "7"], "has no checkpoint at step 7", False),
    (["eval-downstream", "RUN", "--limit", "-1"], "--limit -1 is out of range", False),
    (["eval-downstream", "RUN", "--limit", "0"], "--limit 0 is out of range", False),
    (["eval-downstream", "RUN", "--batch-size", "0"], "--batch-size 0 is out of range", False),
    (["eval-downstream", "RUN", "--num-fewshot", "-1"], "--num-fewshot -1 is out of range", False),
    (["eval-downstream", "RUN", "--bootstrap-iters", "-5"], "--bootstrap-iters -5 is out of range", False),
    # analyze numbers and steps
    (["analyze", "RUN", "--batch-size", "0"], "--batch-size 0 is out of range", False),
    (["analyze", "RUN", "--sequences", "0"], "--sequences 0 is out of range", False),
    (["analyze", "RUN", "--jobs", "0"], "--jobs 0 is out of range", False),
    (["analyze", "RUN", "--steps", "7", "--metrics", "spectra"], "no run has a checkpoint at step(s) 7", False),
    # import numbers (checked before the source is read)
    (["import", "RUN", "--out", "TMP/imported", "--seq-len", "0"], "--seq-len 0 is out of range", False),
    (["import", "RUN", "--out", "TMP/imported", "--rows", "-3"], "--rows -3 is out of range", False),
    # --token-file
    (["analyze", "RUN", "--token-file", "TMP/missing.npy"], "--token-file: TMP/missing.npy does not exist", False),
    (["analyze", "RUN", "--token-file", "FILE"], "is not a readable .npy of token rows", False),
    (["analyze", "RUN", "--token-file", "TMP/floats.npy"], "must hold integer token rows", False),
    # output folders: an existing file, a path under a file, a folder this user cannot write
    (["train", *NANO, "--out", "FILE"], "--out FILE is an existing file", False),
    (["analyze", "RUN", "--out", "FILE"], "--out FILE is an existing file", False),
    (["eval-downstream", "RUN", "--out", "FILE"], "--out FILE is an existing file", False),
    (["study", "demo", "--out", "FILE"], "--out FILE is an existing file", False),
    (["demo", "--out", "FILE"], "--out FILE is an existing file", False),
    (["demo", "--methods", "full-rank,nope", "--out", "TMP/d"], "study method 'nope' is unknown; choose from", False),
    (["demo", "--methods", " , ", "--out", "TMP/d"], "--methods is empty", False),
    (["train", *NANO, "--out", "FILE/runs"], "lies under FILE, which is a file", False),
    (["analyze", "RUN", "--out", "FILE/tables"], "lies under FILE, which is a file", False),
    (["eval-downstream", "RUN", "--out", "FILE/d.csv"], "lies under FILE, which is a file", False),
    (["analyze", "RUN", "--cache-dir", "FILE"], "--cache-dir FILE is an existing file", False),
    (["eval-downstream", "RUN", "--cache-dir", "FILE"], "--cache-dir FILE is an existing file", False),
    (["train", *NANO, "--out", "RO"], "RO is not writable by this user", False),
    (["train", *NANO, "--out", "RO/runs"], "RO is not writable by this user", False),
    (["analyze", "RUN", "--out", "RO"], "RO is not writable by this user", False),
    (["analyze", "RUN", "--cache-dir", "RO"], "RO is not writable by this user", False),
    (["eval-downstream", "RUN", "--out", "RO"], "RO is not writable by this user", False),
    (["eval-downstream", "RUN", "--cache-dir", "RO"], "RO is not writable by this user", False),
    (["study", "demo", "--out", "RO"], "RO is not writable by this user", False),
    # run names over NAME_MAX, or not one folder name
    (["train", *NANO, "--run-name", "x" * 300, "--out", "TMP/runs"], "run name is 300 bytes long", False),
    (["train", *NANO, "--run-name", "a/b", "--out", "TMP/runs"], "contains a path separator", False),
]


@pytest.mark.parametrize("args, fragment, no_cuda", ROWS, ids=lambda v: re.sub(r"\W+", "_", " ".join(v))[:60]
                         if isinstance(v, list) else None)
def test_bad_argument_is_one_line(args, fragment, no_cuda, nano_run, tmp_path, capsys, monkeypatch):
    if args[0] == "eval-downstream":
        require_package("lm_eval", "pip install -e '.[eval]'")
    (tmp_path / "file.txt").write_text("not a folder, not an .npy\n")
    np.save(tmp_path / "floats.npy", np.zeros((2, 8), dtype=np.float32))
    (tmp_path / "ro").mkdir()
    names = {"RUN": str(nano_run), "TMP": str(tmp_path), "FILE": str(tmp_path / "file.txt"),
             "RO": str(tmp_path / "ro")}

    def fill(text: str) -> str:
        return re.sub(r"\b(RUN|TMP|FILE|RO)\b", lambda m: names[m.group(1)], text)

    real_access = os.access
    denied = tmp_path / "ro"
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (Path(p) == denied and mode & os.W_OK)
                        and real_access(p, mode, **kw))  # still readable: click checks that
    if no_cuda:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = sorted(p.name for p in nano_run.parent.iterdir())
    code, err = run_cli([fill(a) for a in args], capsys, monkeypatch)
    _one_line(code, err, fill(fragment))
    assert sorted(p.name for p in nano_run.parent.iterdir()) == before  # failed before writing anything
    assert list((tmp_path / "ro").iterdir()) == []


# ---- --cache-dir: a read-only run folder stays untouched, and a re-run is all cache hits -----------------
def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _counts(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if what in r.getMessage()]


def test_analyze_cache_dir_leaves_the_run_folder_untouched(nano_run, tmp_path, capsys, monkeypatch, caplog):
    run = shutil.copytree(nano_run, tmp_path / "runs" / "run")
    before = _listing(run)
    cache = tmp_path / "cache"
    args = ["analyze", str(run), "--metrics", "spectra", "--no-plots", "--cache-dir", str(cache)]
    caplog.set_level(logging.INFO, logger="lowrank_lens")
    for _ in range(2):
        code, err = run_cli(args, capsys, monkeypatch)
        assert code in (0, None), err
    totals = [m.strip().split(" in ")[0] for m in _counts(caplog, " computed, ")]
    assert totals == ["spectra: 3 computed, 0 cached", "spectra: 0 computed, 3 cached"]
    assert _listing(run) == before
    assert not (run / "analysis").exists() and not (tmp_path / "runs" / "analysis").exists()
    assert len(list((cache / "run" / "spectra").glob("*.json"))) == 3
    assert (cache / "analysis" / "spectra.csv").is_file()


def test_without_cache_dir_an_unwritable_run_folder_says_to_pass_one(nano_run, tmp_path, capsys, monkeypatch):
    run = shutil.copytree(nano_run, tmp_path / "runs" / "run")
    (run / "analysis").write_text("a file where the cache folder should be\n")  # root cannot write into it
    code, err = run_cli(["analyze", str(run), "--metrics", "spectra", "--steps", "final", "--no-plots"],
                        capsys, monkeypatch)
    _one_line(code, err, "pass --cache-dir DIR")


def test_eval_downstream_cache_dir_leaves_the_run_folder_untouched(nano_run, tmp_path, capsys, monkeypatch,
                                                                    caplog):
    require_package("lm_eval", "pip install -e '.[eval]'")
    run = shutil.copytree(nano_run, tmp_path / "runs" / "run")
    before = _listing(run)
    cache = tmp_path / "cache"
    args = ["eval-downstream", str(run), "--tasks", "lens_mc", "--limit", "2", "--bootstrap-iters", "0",
            "--device", "cpu", "--cache-dir", str(cache)]
    caplog.set_level(logging.INFO, logger="lowrank_lens")
    for _ in range(2):
        code, err = run_cli(args, capsys, monkeypatch)
        assert code in (0, None), err
    assert _listing(run) == before
    assert len(list((cache / "run" / "downstream").glob("*.json"))) == 1
    assert (cache / "downstream" / "downstream.csv").is_file()
    assert len(_counts(caplog, "downstream: run step 4: 1 cached results")) == 1  # the second call only


# ---- item 17: task YAMLs are code ------------------------------------------------------------------------
def test_eval_downstream_help_says_task_yamls_are_code(capsys, monkeypatch):
    from lowrank_lens import cli

    monkeypatch.setattr("sys.argv", ["lowrank-lens", "eval-downstream", "--help"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
    assert "lm-eval's !function tag imports and runs Python from the YAML's folder" in text
    assert "a !function tag imports and runs a Python file of that folder" in text
