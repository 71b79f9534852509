"""Fault injection on run folders: what `train` / `resume` may delete, diverged runs, integrity on read,
locks, interrupted saves and a full disk (issue 11 B, C, D). Each test failed before its fix.

Runs are nano (0.17M parameters, 4 steps): one nano_run once per module and copied per case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from lens_testutil import MISSING_OPTIONAL, optional_packages_required, run_cli
from safetensors.torch import load_file, save_file

from lowrank_lens.errors import LensError
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder import checkpoint as ck
from lowrank_lens.runfolder.folder import RunLock
from lowrank_lens.train import loop, train

NANO = ["train.steps=4", "train.checkpoints=2"]
NANO_CLI = ["train", "--preset", "nano", "--steps", "4", "--set", "train.checkpoints=2"]


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


def _one_line_error(code, err, fragment):
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert fragment in err, err


def _records(run: Path) -> list[dict]:
    """log.jsonl without its timing fields (the only ones that differ between identical runs)."""
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tok_per_s", "data_s")} for r in recs]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- B5: train deletes only what it wrote; run names stay inside --out ---------------------------------
@pytest.mark.parametrize("name, fragment", [
    ("..", "not a folder name"), (".", "not a folder name"), ("a/b", "path separator"),
    ("/tmp/elsewhere", "path separator"), ("x" * 300, "300 bytes long"),
])
def test_unsafe_run_names_are_refused_and_nothing_is_touched(name, fragment, tmp_path, capsys, monkeypatch):
    out = tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    (tmp_path / "parent" / "precious.txt").write_text("user data")
    (out / "also-precious.txt").write_text("user data")
    before = _listing(tmp_path)
    code, err = run_cli([*NANO_CLI, "--out", str(out), "--run-name", name], capsys, monkeypatch)
    _one_line_error(code, err, fragment)
    assert _listing(tmp_path) == before


def test_a_user_folder_of_the_run_name_is_never_deleted(tmp_path, capsys, monkeypatch):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    code, err = run_cli([*NANO_CLI, "--out", str(tmp_path), "--run-name", "mine"], capsys, monkeypatch)
    _one_line_error(code, err, "was not made by lowrank-lens")
    assert (user / "thesis.tex").read_text() == "years of work" and _listing(user) == ["thesis.tex"]


def test_a_symlinked_run_folder_is_refused(nano_run, tmp_path, capsys, monkeypatch):
    real = _copy(nano_run, tmp_path / "real")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(real)
    code, err = run_cli([*NANO_CLI, "--out", str(tmp_path / "out"), "--run-name", "link", "--resume"], capsys,
                        monkeypatch)
    _one_line_error(code, err, "symbolic link")
    code, err = run_cli(["resume", str(tmp_path / "out" / "link")], capsys, monkeypatch)
    _one_line_error(code, err, "symbolic link")


def test_resume_without_checkpoints_keeps_log_and_config(nano_run, tmp_path, capsys, monkeypatch):
    run = _copy(nano_run, tmp_path / "run")
    shutil.rmtree(run / "ckpt")
    log_before, cfg_before = (run / "log.jsonl").read_bytes(), (run / "config.json").read_bytes()
    code, err = run_cli(["resume", str(run)], capsys, monkeypatch)
    _one_line_error(code, err, "no complete checkpoint")
    assert (run / "log.jsonl").read_bytes() == log_before and (run / "config.json").read_bytes() == cfg_before


def test_a_run_that_died_before_step_0_starts_over_in_place(nano_run, tmp_path):
    run = _copy(nano_run, tmp_path / "run")
    shutil.rmtree(run / "ckpt")
    lines = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text(lines[0] + "\n")  # only the step-0 validation was logged
    assert json.loads(lines[0])["step"] == 0
    train(build_config("nano", "full-rank", NANO), tmp_path, run_name="run")
    assert [s for s, _ in ck.complete_checkpoints(run)] == [0, 2, 4]
    assert _records(run) == _records(nano_run)  # no duplicated records


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path, capsys, monkeypatch):
    code, err = run_cli([*NANO_CLI, "--out", str(tmp_path), "--data", str(tmp_path / "missing.txt")], capsys,
                        monkeypatch)
    assert code == 2 and list(tmp_path.iterdir()) == []


# ---- C7: a diverged run stops, never saves non-finite weights, and readers refuse them -------------------
@pytest.mark.parametrize("lr", ["1e4", "1e30", "inf", "nan"])
def test_absurd_learning_rates_are_refused_before_training(lr, tmp_path, capsys, monkeypatch):
    code, err = run_cli([*NANO_CLI, "--out", str(tmp_path), "--set", f"optim.lr={lr}"], capsys, monkeypatch)
    _one_line_error(code, err, "optim.lr")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_divergence_stops_with_one_line_and_no_nonfinite_checkpoint(poison, tmp_path, capsys, monkeypatch):
    _poison_step(monkeypatch, set(range(2, 100)), poison)
    code, err = run_cli([*NANO_CLI, "--out", str(tmp_path)], capsys, monkeypatch)
    _one_line_error(code, err, "training diverged at step 3 (loss")
    assert "step 2, which is intact" in err
    run = tmp_path / "nano-full-rank-seed0"
    assert [s for s, _ in ck.complete_checkpoints(run)] == [0, 2]
    for _, path in ck.complete_checkpoints(run):
        assert not ck.nonfinite_tensors(load_file(str(path / "model.safetensors")))


def _poison_step(monkeypatch, bad_steps: set[int], value: float = float("nan")):
    """The training loss is `value` at the given 0-based updates: a data or numerics accident."""
    cfg = build_config("nano", "full-rank", NANO).train
    per_step = cfg.total_batch_size // cfg.micro_batch_size  # token_nll calls per update
    real, calls = loop.token_nll, {"n": 0}

    def poisoned(net, input_ids, labels):
        nll, n = real(net, input_ids, labels)
        step = calls["n"] // per_step
        calls["n"] += 1
        return (nll * value if step in bad_steps else nll), n

    monkeypatch.setattr(loop, "token_nll", poisoned)


def test_skip_mode_skips_a_bad_update_and_records_it(tmp_path, monkeypatch):
    _poison_step(monkeypatch, {1})
    run = train(build_config("nano", "full-rank", [*NANO, "train.on_nonfinite=skip", "train.log_every=1"]),
                tmp_path)
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert [r.get("skipped_steps", 0) for r in train_recs] == [0, 1, 1, 1]
    assert [s for s, _ in ck.complete_checkpoints(run)] == [0, 2, 4]
    assert ck.load_resume_state(run / "ckpt" / "step_000004")["skipped"] == 1


def test_skip_mode_still_stops_after_ten_bad_updates_in_a_row(tmp_path, monkeypatch):
    _poison_step(monkeypatch, set(range(3, 100)))
    cfg = build_config("nano", "full-rank", ["train.steps=20", "train.checkpoints=1", "train.on_nonfinite=skip"])
    with pytest.raises(LensError, match="diverged at step 14 after 10 skipped updates in a row"):
        train(cfg, tmp_path)


def _nan_checkpoint(run: Path) -> Path:
    path = run / "ckpt" / "step_000004"
    state = load_file(str(path / "model.safetensors"))
    state["model.norm.weight"][0] = float("nan")
    save_file(state, str(path / "model.safetensors"), metadata={"format": "lowrank-lens"})
    meta = json.loads((path / "meta.json").read_text())
    meta["model_sha256"] = ck.file_sha256(path / "model.safetensors")  # consistent hash: only the values are bad
    (path / "meta.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("command", [
    ["resume"], ["analyze", "--metrics", "spectra", "--steps", "final", "--no-plots"],
    ["eval-downstream", "--tasks", "lens_mc", "--limit", "2"],
])
def test_readers_refuse_nonfinite_weights(command, nano_run, tmp_path, capsys, monkeypatch):
    run = _copy(nano_run, tmp_path / "run")
    _nan_checkpoint(run)
    if command == ["resume"]:
        meta = json.loads((run / "config.json").read_text())
        meta["train"]["steps"] = 6  # so that resume has something to do from step 4
        (run / "config.json").write_text(json.dumps(meta))
    code, err = run_cli([command[0], str(run), *command[1:]], capsys, monkeypatch)
    _one_line_error(code, err, "non-finite weights")


# ---- D8: garbled bytes are an error on every read path, never a result ---------------------------------
def _garble(path: Path) -> None:
    """Flip one byte in the tensor data (the header stays valid, so only the hash can tell)."""
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("command", [
    ["analyze", "--metrics", "spectra", "--steps", "final", "--no-plots"],
    ["eval-downstream", "--tasks", "lens_mc", "--limit", "2"],
])
def test_garbled_weights_are_refused_even_with_a_cached_result(command, nano_run, tmp_path, capsys, monkeypatch):
    run = _copy(nano_run, tmp_path / "run")
    code, _ = run_cli([command[0], str(run), *command[1:]], capsys, monkeypatch)
    assert code == 0  # a cached result now exists for the intact weights
    _garble(run / "ckpt" / "step_000004")
    code, err = run_cli([command[0], str(run), *command[1:]], capsys, monkeypatch)
    _one_line_error(code, err, "is corrupt (model.safetensors does not match its recorded hash)")


def test_hashing_happens_once_per_file_per_process(nano_run, monkeypatch):
    path = nano_run / "ckpt" / "step_000002"
    calls = []
    real = ck.file_sha256
    monkeypatch.setattr(ck, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    monkeypatch.setattr(ck, "_VERIFIED", {})
    for _ in range(3):
        ck.load_model_state(path)
        ck.checkpoint_sha256(path)
    assert len(calls) == 1


# ---- D9: one process per run folder ---------------------------------------------------------------------
def test_a_second_trainer_of_the_same_run_is_refused(nano_run, tmp_path, capsys, monkeypatch):
    run = _copy(nano_run, tmp_path / "run")
    held = RunLock(run)  # as a running `train` holds it (flock: another open file conflicts)
    try:
        code, err = run_cli([*NANO_CLI, "--out", str(tmp_path), "--run-name", "run", "--resume", "--steps", "6"],
                            capsys, monkeypatch)
        _one_line_error(code, err, f"another process (pid {os.getpid()}) is training in")
    finally:
        held.release()
    assert _records(run) == _records(nano_run)
    code, _ = run_cli([*NANO_CLI, "--out", str(tmp_path), "--run-name", "run", "--resume"], capsys, monkeypatch)
    assert code == 0  # released: the lock never outlives its holder


def test_a_hard_linked_copy_of_a_run_locks_its_own_file_never_the_originals(nano_run, tmp_path):
    """`cp -al A B; resume B` (issue 25 §4): B's lock neither writes through to A's .lock nor waits on A's
    trainer, and still keeps a second trainer out of B."""
    a = _copy(nano_run, tmp_path / "A")
    held = RunLock(a)  # A is training
    try:
        subprocess.run(["cp", "-al", str(a), str(tmp_path / "B")], check=True)
        b = tmp_path / "B"
        assert os.stat(b / ".lock").st_ino == os.stat(a / ".lock").st_ino  # the copy shares A's lock file
        before = ((a / ".lock").read_bytes(), os.stat(a / ".lock").st_ino)
        lock_b = RunLock(b)  # not refused because of A's trainer
        try:
            assert ((a / ".lock").read_bytes(), os.stat(a / ".lock").st_ino) == before
            assert os.stat(b / ".lock").st_ino != before[1] and os.stat(a / ".lock").st_nlink == 1
            with pytest.raises(LensError, match="another process .* is training in"):
                RunLock(b)
        finally:
            lock_b.release()
    finally:
        held.release()


@pytest.mark.slow
def test_two_trainers_started_together_one_wins_and_the_log_has_no_repeats(tmp_path):
    from lens_testutil import PYTHON, cli_env

    cmd = [PYTHON, "-m", "lowrank_lens", *NANO_CLI, "--out", str(tmp_path), "--resume"]
    procs = [subprocess.Popen(cmd, env=cli_env(), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    log = [json.loads(line) for line in (tmp_path / "nano-full-rank-seed0" / "log.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in log]
    assert len(keys) == len(set(keys))
    # Either the second found the lock held, or it started after the first finished and found the run done.
    assert codes in ([0, 2], [0, 0])
    if codes == [0, 2]:
        assert any("another process" in err for _, err in results)


# ---- D10: a kill during a save leaves nothing behind after the next start ------------------------------
def test_interrupted_saves_are_tidied_and_a_moved_aside_checkpoint_restored(nano_run, tmp_path):
    run = _copy(nano_run, tmp_path / "run")
    ckpt = run / "ckpt"
    shutil.copytree(ckpt / "step_000004", ckpt / ".tmp-step_000004-4242")  # killed before its rename
    os.rename(ckpt / "step_000002", ckpt / ".old-step_000002-4343")  # killed between the two renames
    (ckpt / ".tmp-resume-77").mkdir()
    saved = json.loads((run / "config.json").read_text())  # resume to step 6: the saved config must say so
    saved["train"]["steps"] = 6
    (run / "config.json").write_text(json.dumps(saved))
    train(build_config("nano", "full-rank", ["train.steps=6", "train.checkpoints=2"]), tmp_path, run_name="run",
          resume=True)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["step_000000", "step_000002", "step_000004", "step_000006"]
    assert load_file(str(ckpt / "step_000002" / "model.safetensors")).keys() == \
        load_file(str(nano_run / "ckpt" / "step_000002" / "model.safetensors")).keys()


# ---- D11/D12: a full disk is one line at the one write path; one file mode ------------------------------
@pytest.mark.parametrize("writer, error", [
    ("save_file", "SafetensorError"), ("torch_save", "RuntimeError"),
])
def test_full_disk_in_each_checkpoint_writer_is_one_line(writer, error, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def fail(*a, **k):
        if error == "SafetensorError":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(ck, "save_file", fail) if writer == "save_file" else monkeypatch.setattr(ck.torch, "save",
                                                                                              fail)
    with pytest.raises(LensError, match="disk full while saving checkpoint"):
        ck.save_checkpoint(tmp_path / "ckpt" / "step_000001", {"w": torch.ones(2)}, {"step": 1}, {"step": 1})
    assert list((tmp_path / "ckpt").iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 8 MiB tmpfs (needs root, as in CI), so a full disk is the kernel's ENOSPC, not a mock."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode:
        message = f"{MISSING_OPTIONAL}: a tmpfs mount for the real disk-full test (run as root): {res.stderr.strip()}"
        pytest.fail(message) if optional_packages_required() else pytest.skip(message)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("writer", ["model.safetensors", "state.pt"])
def test_a_really_full_disk_keeps_earlier_checkpoints_and_resume_finishes_bitwise(writer, nano_run, tiny_disk,
                                                                                monkeypatch):
    weights = (nano_run / "ckpt" / "step_000002" / "model.safetensors").stat().st_size
    leave = 64 * 1024 + (weights if writer == "state.pt" else 0)  # room for what comes before `writer`
    real_save = loop.Trainer.save

    def fill_disk_before_step_2(self, val, rolling=False):
        if self.state.step == 2:
            st = os.statvfs(tiny_disk)
            (tiny_disk / "ballast").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
        return real_save(self, val, rolling)

    monkeypatch.setattr(loop.Trainer, "save", fill_disk_before_step_2)
    cfg = build_config("nano", "full-rank", NANO)
    with pytest.raises(LensError, match="disk full while saving checkpoint .*step_000002.*--resume"):
        train(cfg, tiny_disk, run_name="run")
    run = tiny_disk / "run"
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step_000000"]  # no .tmp-*, step 0 intact
    for line in (run / "log.jsonl").read_text().splitlines():
        json.loads(line)
    (tiny_disk / "ballast").unlink()
    monkeypatch.setattr(loop.Trainer, "save", real_save)
    train(cfg, tiny_disk, run_name="run", resume=True)
    a = load_file(str(run / "ckpt" / "step_000004" / "model.safetensors"))
    b = load_file(str(nano_run / "ckpt" / "step_000004" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert _records(run) == _records(nano_run)


def test_log_append_that_fails_half_way_leaves_no_torn_line(tmp_path, monkeypatch):
    from lowrank_lens.train import logs

    logger = logs.RunLogger(tmp_path, enabled=True)
    logger.write({"kind": "train", "step": 1})
    before = (tmp_path / "log.jsonl").read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logs.os, "write", half_then_full)
    with pytest.raises(LensError, match="disk full while writing"):
        logger.write({"kind": "train", "step": 2, "loss": 1.0})
    assert (tmp_path / "log.jsonl").read_bytes() == before


def test_checkpoint_files_share_one_mode(nano_run):
    path = nano_run / "ckpt" / "step_000004"
    modes = {name: (path / name).stat().st_mode & 0o777 for name in ("model.safetensors", "meta.json", "state.pt")}
    assert len(set(modes.values())) == 1, modes
    assert modes["meta.json"] == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_rebuilding_a_report_removes_only_report_files(tmp_path):
    from lowrank_lens.report.figures import fresh_dir

    figs = tmp_path / "report" / "figures"
    (figs / "runs").mkdir(parents=True)
    (figs / "runs" / "loss.png").write_bytes(b"old figure")
    (figs / "table.csv").write_text("a\n")
    (figs / "notes.md").write_text("mine")
    fresh_dir(figs)
    assert _listing(figs) == ["notes.md"]


def test_a_run_saved_for_cuda_resumes_on_a_cpu_with_device_cpu(nano_run, tmp_path, capsys, monkeypatch):
    run = _copy(nano_run, tmp_path / "run")
    saved = json.loads((run / "config.json").read_text())
    saved["train"]["device"], saved["train"]["steps"] = "cuda", 6
    (run / "config.json").write_text(json.dumps(saved))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(["resume", str(run)], capsys, monkeypatch)
    _one_line_error(code, err, "asks for a GPU")
    code, err = run_cli(["resume", str(run), "--device", "cpu"], capsys, monkeypatch)
    assert code == 0, err
    assert [s for s, _ in ck.complete_checkpoints(run)][-1] == 6
