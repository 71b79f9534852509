"""Bad input gets one clear line (`error: ...`, exit 2), never a traceback."""

import subprocess

import pytest
from lens_testutil import PYTHON, cli_env, run_cli


@pytest.mark.parametrize("args, fragment", [
    (["train", "--preset", "70m"], "unknown preset '70m'; choose one of: nano, micro"),
    (["train", "--method", "sgd"], "unknown method 'sgd'; choose one of:"),
    (["train", "--preset", "nano", "--set", "train.micro_batch_size=3"], "not divisible by train.micro_batch_size"),
    (["train", "--preset", "nano", "--data", "/no/such/corpus.txt"], "/no/such/corpus.txt"),
    (["train", "--preset", "nano", "--set", "train.precision=fp8"], "train.precision 'fp8' is not one of"),
    (["resume", "/no/such/run"], "has no config.json"),
    (["analyze", "/no/such/run"], "neither a run directory"),
    (["analyze", "/tmp", "--steps", "5x"], "--steps '5x'"),
])
def test_one_line_errors(args, fragment, capsys, monkeypatch, tmp_path):
    code, err = run_cli([*args, *(["--out", str(tmp_path)] if args[0] == "train" else [])], capsys, monkeypatch)
    assert code == 2
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_tokenizer_larger_than_model_vocab(capsys, monkeypatch, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(600)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w1", pad_token="w2").save_pretrained(
        tmp_path / "tok")
    code, err = run_cli(["train", "--preset", "nano", "--tokenizer", str(tmp_path / "tok"), "--out",
                         str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and "600" in err and "512" in err and "model.vocab_size" in err


def test_resume_with_other_config_and_corrupt_checkpoint(capsys, monkeypatch, tmp_path):
    import shutil

    from lowrank_lens.presets import build_config
    from lowrank_lens.train import train

    base = ["train", "--preset", "nano", "--steps", "4", "--set", "train.checkpoints=2", "--out", str(tmp_path)]
    run_dir = train(build_config("nano", "full-rank", ["train.steps=4", "train.checkpoints=2"]), tmp_path)
    code, err = run_cli(base, capsys, monkeypatch)
    assert code == 2 and "already holds a run; add --resume" in err
    code, err = run_cli([*base, "--resume", "--set", "optim.lr=0.01"], capsys, monkeypatch)
    assert code == 2 and "optim.lr (saved 0.003, now 0.01)" in err
    code, err = run_cli(["train", "--preset", "nano", "--steps", "6", "--set", "train.checkpoints=2", "--out",
                         str(tmp_path), "--resume"], capsys, monkeypatch)
    assert code == 2 and "train.steps (saved 4, now 6)" in err
    # Simulate a run killed after step 2 whose newest checkpoint was then damaged on disk.
    shutil.rmtree(run_dir / "ckpt" / "step_000004")
    weights = run_dir / "ckpt" / "step_000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = run_cli([*base, "--resume"], capsys, monkeypatch)
    assert code == 2 and "step_000002 is corrupt" in err and "delete it" in err


def test_no_traceback_through_the_real_entry_point(tmp_path):
    res = subprocess.run([PYTHON, "-m", "lowrank_lens", "train", "--preset", "nano", "--method", "nope"],
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: unknown method 'nope'")
    assert "Traceback" not in res.stderr


def test_list_shows_each_method_by_its_description(capsys, monkeypatch):
    import sys

    from lowrank_lens import cli
    from lowrank_lens.methods import get_method, method_names

    monkeypatch.setattr(sys, "argv", ["lowrank-lens", "list"])
    with pytest.raises(SystemExit):
        cli.main()
    out = capsys.readouterr().out
    for name in method_names():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert get_method(name).description in line and get_method(name).description
