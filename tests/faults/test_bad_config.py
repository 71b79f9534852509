"""Fault injection: bad run-config values and bad study files fail when they are loaded, as one line that names
the field (issue 11 items 3, 6, 9, 14, 15), through `lowrank-lens config --set` and `study FILE --dry-run`."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import tomllib
from pathlib import Path

import pytest
from lens_testutil import REPO, run_cli

from lowrank_lens.config import TRAIN_SEED_LIMIT, DataConfig, ModelConfig, OptimConfig, TrainConfig
from lowrank_lens.errors import LensError
from lowrank_lens.methods import get_method, method_names
from lowrank_lens.presets import MODEL_SHAPES, build_config
from lowrank_lens.runfolder.files import run_config_from_dict
from lowrank_lens.study.spec import StudySpec, plan_runs
from lowrank_lens.study.spec_files import load_spec

LOW_RANK = ["cola", "galore", "fira", "sltrain", "relora", "low-rank", "lora"]

# (method, override or tuple of overrides, fragment of the one-line error). The nano preset: hidden 64,
# intermediate 176, so the smallest target matrix (q_proj) is 64 x 64 and the low-rank presets use rank 16.
BAD_OVERRIDES = [
    ("full-rank", "model.hidden_size=-64", "model.hidden_size"),
    ("full-rank", "model.intermediate_size=1e400", "model.intermediate_size"),
    ("full-rank", "model.num_layers=1.5", "model.num_layers"),
    ("full-rank", "model.num_heads=0", "model.num_heads"),
    ("full-rank", "model.num_heads=3", "model.num_heads"),
    ("full-rank", "model.num_heads=64", "model.num_heads"),  # head dimension 1: RoPE needs pairs
    ("full-rank", "model.vocab_size=0", "model.vocab_size"),
    ("full-rank", "model.max_seq_len=0", "model.max_seq_len"),
    ("full-rank", "model.rms_norm_eps=0", "model.rms_norm_eps"),
    ("full-rank", "model.init_std=inf", "model.init_std"),
    ("full-rank", "data.source=", "data.source"),
    ("full-rank", "data.tokenizer= ", "data.tokenizer"),
    ("full-rank", "data.seq_len=4", "data.seq_len"),
    ("full-rank", "data.mode=rows", "data.mode"),
    ("full-rank", "data.text_field=", "data.text_field"),
    ("full-rank", "data.shuffle_seed=-7", "data.shuffle_seed"),
    ("full-rank", "data.shuffle_seed=9223372036854775808", "data.shuffle_seed"),
    ("full-rank", "data.val_tokens=-1", "data.val_tokens"),
    ("full-rank", "data.val_fraction=1", "data.val_fraction"),
    ("full-rank", "data.val_fraction=nan", "data.val_fraction"),
    ("full-rank", "data.max_documents=-1", "data.max_documents"),
    ("full-rank", "data.streaming=maybe", "data.streaming"),
    ("full-rank", "optim.lr=inf", "optim.lr"),
    ("full-rank", "optim.lr=-inf", "optim.lr"),
    ("full-rank", "optim.lr=nan", "optim.lr"),
    ("full-rank", "optim.lr=1e30", "optim.lr"),
    ("full-rank", "optim.lr=0", "optim.lr"),
    ("full-rank", "optim.beta1=2", "optim.beta1"),
    ("full-rank", "optim.beta1=-0.1", "optim.beta1"),
    ("full-rank", "optim.beta2=1", "optim.beta2"),
    ("full-rank", "optim.eps=-1", "optim.eps"),
    ("full-rank", "optim.eps=0", "optim.eps"),
    ("full-rank", "optim.weight_decay=-0.5", "optim.weight_decay"),
    ("full-rank", "optim.grad_clip=nan", "optim.grad_clip"),
    ("full-rank", "optim.grad_clip=-1", "optim.grad_clip"),
    ("full-rank", "optim.warmup_steps=-1", "optim.warmup_steps"),
    ("full-rank", "optim.warmup_steps=1.5", "optim.warmup_steps"),
    ("full-rank", "optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
    ("full-rank", "train.steps=1e400", "train.steps"),
    ("full-rank", "train.steps=2.5", "train.steps"),
    ("full-rank", "train.steps=inf", "train.steps"),
    ("full-rank", "train.steps=nan", "train.steps"),
    ("full-rank", "train.steps=0", "train.steps"),
    ("full-rank", "train.total_batch_size=-8", "train.total_batch_size"),
    ("full-rank", "train.micro_batch_size=0", "train.micro_batch_size"),
    ("full-rank", "train.precision=fp16", "train.precision"),
    ("full-rank", "train.seed=1e30", "train.seed"),
    ("full-rank", "train.seed=-1", "train.seed"),
    ("full-rank", f"train.seed={TRAIN_SEED_LIMIT}", "train.seed"),
    ("full-rank", "train.seed=true", "train.seed"),
    ("full-rank", "train.eval_every=-1", "train.eval_every"),
    ("full-rank", "train.eval_batch_size=-3", "train.eval_batch_size"),
    ("full-rank", "train.log_every=0", "train.log_every"),
    ("full-rank", "train.checkpoints=0", "train.checkpoints"),
    ("full-rank", "train.resume_every=-1", "train.resume_every"),
    ("full-rank", "train.device=gpu", "train.device"),
    ("full-rank", "train.sinks=wandb,csv", "log sink"),
    ("full-rank", "train.on_nonfinite=ignore", "train.on_nonfinite"),
    ("full-rank", "train.lens_every=0", "train.lens_every"),
    ("full-rank", "train.parallel=zero3", "train.parallel"),
    ("full-rank", "method.targets=", "method.targets"),
    ("full-rank", "method.targets=*.nope", "method.targets"),
    ("full-rank", "method.targets=model.norm", "method.targets"),
    ("full-rank", "method.targets=*.self_attn", "method.targets"),
    *[(m, "method.rank=65", "method.rank 65 exceeds 64") for m in LOW_RANK],
    *[(m, "method.rank=-1", "method.rank") for m in LOW_RANK],
    # The nano presets leave the rank automatic: hidden // 4 = 16 of the final shape, against gate/up/down of
    # 8 x 64 / 64 x 8; an explicit method.rank=0 is the same automatic rank.
    *[(m, ov, "method.rank (automatic: hidden_size // 4 = 16) exceeds 8 = min(out, in)") for m in LOW_RANK
      for ov in ("model.intermediate_size=8", ("model.intermediate_size=8", "method.rank=0"))],
    ("galore", ("model.intermediate_size=8", "method.rank=16"), "method.rank 16 exceeds 8"),
    *[(m, "optim.eps=1e-8", "galore does not read optim.eps, it uses method.eps; set that instead".replace(
        "galore", m)) for m in ("galore", "fira")],
    *[(m, "method.targets=model.embed_tokens", "method.targets") for m in ("cola", "sltrain", "relora", "low-rank",
                                                                           "lora")],
    ("galore", "method.update_proj_gap=0", "method.update_proj_gap"),
    ("galore", "method.scale=0", "method.scale"),
    ("galore", "method.scale=inf", "method.scale"),
    ("galore", "method.eps=0", "method.eps"),
    ("fira", "method.gamma=0.5", "method.gamma"),
    ("fira", "method.gamma=nan", "method.gamma"),
    ("fira", "method.residual=both", "method.residual"),
    ("cola", "method.only_lr_act=2", "method.only_lr_act"),
    ("relora", "method.alpha=-1", "method.alpha"),  # 0 = rank / 4
    ("relora", "method.dropout=1", "method.dropout"),
    ("relora", "method.reset_every=-1", "method.reset_every"),
    ("relora", "method.reset_every=1", "method.reset_every"),
    ("relora", ("method.reset_every=5", "method.restart_warmup_steps=5"), "method.restart_warmup_steps"),
    ("relora", "method.restart_warmup_steps=-2", "method.restart_warmup_steps"),
    ("relora", "method.prune=top", "method.prune"),
    ("relora", "method.prune_ratio=2", "method.prune_ratio"),
    ("relora", "method.zero_init_bug=sometimes", "method.zero_init_bug"),
    ("sltrain", "method.alpha=-1", "method.alpha"),
    ("sltrain", "method.density=0", "method.density"),
    ("sltrain", "method.density=1e-9", "method.density"),  # int(1e-9 * 64 * 64) = 0 non-zeros
    ("sltrain", "method.support_seed=-1", "method.support_seed"),
    ("low-rank", "method.rank=2.5", "method.rank"),
    ("lora", "method.alpha=-1", "method.alpha"),  # 0 = rank / 4
    ("lora", "method.alpha=inf", "method.alpha"),
    ("lora", "method.dropout=1", "method.dropout"),
    ("lora", "method.dropout=-0.1", "method.dropout"),
    ("apollo", "method.scale_type=row", "method.scale_type 'row' is not one of channel, tensor"),
    ("apollo", "method.projection_seed=cuda", "method.projection_seed 'cuda' is not one of run, official"),
    ("apollo", "method.gamma=0.5", "method.gamma must be >= 1"),
    ("apollo", "method.gamma=nan", "method.gamma"),
    ("apollo", "method.scale=0", "method.scale must be positive"),
    ("apollo", "method.scale=inf", "method.scale"),
    ("apollo", "method.rank=65", "method.rank 65 exceeds 64"),
    ("apollo", "method.update_proj_gap=0", "method.update_proj_gap must be >= 1"),
    ("apollo", "method.eps=0", "method.eps must be positive"),
    *[(m, "optim.eps=1e-8", f"{m} does not read optim.eps, it uses method.eps") for m in ("apollo", "apollo-mini")],
    ("apollo-mini", "method.scale_type=channels", "method.scale_type"),
    ("apollo-mini", "method.limiter=maybe", "method.limiter expects true or false"),
    ("apollo", "method.scale_front=maybe", "method.scale_front"),
    ("flora", "method.rank=65", "method.rank"),
    ("flora", "method.kappa=0", "method.kappa"),
    ("flora", "method.decay_rate=0", "method.decay_rate"),
    ("flora", "method.decay_rate=1.5", "method.decay_rate"),
    ("flora", "method.eps=0", "method.eps"),
    ("flora", "method.eps_scale=-1", "method.eps_scale"),
    ("flora", "method.clip_threshold=0", "method.clip_threshold"),
    ("flora", "method.scale_parameter=2", "method.scale_parameter"),
    ("flora", "optim.beta2=0.99", "method.decay_rate"),
    ("flora", "optim.eps=1e-8", "method.eps"),
    ("spam", "method.threshold=-1", "method.threshold"),
    ("spam", "method.reset_interval=1", "method.reset_interval"),
    ("spam", "method.reset_interval=-2", "method.reset_interval"),
    ("spam", "method.reset_warmup=-1", "method.reset_warmup"),
    ("spam", "method.clip_delay=1", "method.clip_delay"),
    ("spam", "method.clip_delay=0", "method.clip_delay"),
    ("spam", "method.official_reset_warmup=2", "method.official_reset_warmup"),
    ("spam", "method.official_target_decay=3", "method.official_target_decay"),
    ("golore", "method.rand_ratio=1.5", "method.rand_ratio must be in [0, 1]"),
    ("golore", "method.rand_ratio=-0.1", "method.rand_ratio must be in [0, 1]"),
    ("golore", "method.rand_ratio=nan", "method.rand_ratio"),
    ("golore", "method.reproject=always", "method.reproject 'always' is not one of random, every, code, none"),
    ("golore", "method.update_proj_gap=0", "method.update_proj_gap"),
    ("golore", "optim.eps=1e-8", "golore does not read optim.eps, it uses method.eps; set that instead"),
    ("loro", "method.exact_every=0", "method.exact_every must be >= 1"),
    ("loro", "method.lazy_lr_scale=-1", "method.lazy_lr_scale must be >= 0"),
    ("loro", "method.refresh=some", "method.refresh 'some' is not one of all, lowrank, regular, none"),
    ("loro", "method.schedule=linear", "method.schedule 'linear' is not one of loro, cosine"),
    ("loro", "method.restart_warmup_steps=-1", "method.restart_warmup_steps must be >= 0"),
    ("loro", "method.restart_warmup_steps=10", "method.restart_warmup_steps 10 must be < method.exact_every 10"),
    ("loro", "method.lr_shift=1", "method.lr_shift must be in [0, 1)"),
    ("loro", "method.rank=40", "method.rank 40: LORO's exact step spans 2r = 80 directions"),
    ("loro", "method.rank=-1", "method.rank must be >= 0"),
    ("loro", "method.targets=model.embed_tokens", "method.targets"),
]

# Values a JSON config.json (or code) can hold but the command line cannot: wrong JSON types.
BAD_JSON = [
    ("train", "steps", True, "train.steps"),
    ("train", "steps", 2.5, "train.steps"),
    ("train", "steps", math.inf, "train.steps"),
    ("train", "seed", 10**400, "train.seed"),
    ("train", "steps", 10**1000, "train.steps"),
    ("train", "sinks", 5, "train.sinks"),
    ("train", "lens", 5, "train.lens"),
    ("train", "init_from", 5, "train.init_from"),
    ("optim", "lr", True, "optim.lr"),
    ("optim", "lr", math.nan, "optim.lr"),
    ("data", "source", 5, "data.source"),
    ("data", "cache_dir", ["a"], "data.cache_dir"),
    ("data", "streaming", 1, "data.streaming"),
    ("model", "hidden_size", 64.0 + 0.5, "model.hidden_size"),
    ("method_cfg", "targets", [1], "method.targets"),
]


def _one_line(err: str, fragment: str) -> None:
    assert "\n" not in err and "Traceback" not in err
    assert fragment in err, err


def method_test_rows() -> list[tuple[str, str, str]]:
    """The rows a method's own test file declares (a literal BAD_VALUES list of (method, override, fragment)
    in tests/methods/test_*.py, read without importing it), so a new method brings its rows with its tests."""
    rows = []
    for path in sorted((Path(__file__).resolve().parents[1] / "methods").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BAD_VALUES" for t in node.targets):
                rows += [tuple(row) for row in ast.literal_eval(node.value)]
    return rows


BAD_OVERRIDES += method_test_rows()


@pytest.mark.parametrize("method, override, fragment", BAD_OVERRIDES)
def test_bad_config_value_is_one_line_naming_the_field(method, override, fragment, capsys, monkeypatch):
    sets = [a for ov in ((override,) if isinstance(override, str) else override) for a in ("--set", ov)]
    code, err = run_cli(["config", "--preset", "nano", "--method", method, *sets], capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ")
    _one_line(err, fragment)


@pytest.mark.parametrize("section, key, value, fragment", BAD_JSON)
def test_bad_json_config_value_is_one_line(section, key, value, fragment):
    d = build_config("nano", "full-rank").to_dict()
    d[section][key] = value
    with pytest.raises(LensError) as exc:
        run_config_from_dict(d)
    _one_line(str(exc.value), fragment)


@pytest.mark.parametrize("make, fragment", [
    (lambda: TrainConfig(steps=2.5), "train.steps"),
    (lambda: TrainConfig(seed=True), "train.seed"),
    (lambda: OptimConfig(lr=math.inf), "optim.lr"),
    (lambda: ModelConfig(init_std=math.nan), "model.init_std"),
    (lambda: DataConfig(max_documents=-1), "data.max_documents"),
    (lambda: get_method("galore").Config(rank=1.5), "method.rank"),
])
def test_direct_construction_is_checked_too(make, fragment):
    with pytest.raises(LensError) as exc:
        make()
    _one_line(str(exc.value), fragment)


def test_every_config_field_has_a_bad_value_row():
    """Each field of the run sections and of every method's Config is rejected by at least one row above."""
    named = {ov.partition("=")[0] for _, ovs, _ in BAD_OVERRIDES for ov in ((ovs,) if isinstance(ovs, str) else ovs)}
    named |= {f"{'method' if s == 'method_cfg' else s}.{k}" for s, k, _, _ in BAD_JSON}
    fields = {f"{sec}.{f.name}" for sec, cls in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig),
                                                 ("train", TrainConfig)) for f in dataclasses.fields(cls)}
    fields |= {f"method.{f.name}" for m in method_names() for f in dataclasses.fields(get_method(m).Config)}
    assert fields - named == set()


@pytest.mark.parametrize("method, overrides, check", [
    ("cola", ["method.rank=64"], lambda c: c.method_cfg.rank == 64),  # the bound itself is allowed
    ("galore", ["method.rank=64"], lambda c: c.method_cfg.rank == 64),
    ("galore", ["method.rank=0"], lambda c: c.method_cfg.rank == 16),  # automatic, recorded resolved
    ("relora", ["method.alpha=0", "method.rank=8"], lambda c: c.method_cfg.alpha == 2.0),
    ("lora", ["method.alpha=0", "method.rank=8"], lambda c: c.method_cfg.alpha == 2.0),
    ("lora", ["method.dropout=0"], lambda c: c.method_cfg.dropout == 0.0),
    ("low-rank", ["method.rank=64"], lambda c: c.method_cfg.rank == 64),  # the bound itself is allowed
    ("galore", ["method.eps=1e-8"], lambda c: c.method_cfg.eps == 1e-8),
    ("full-rank", ["train.steps=1e3"], lambda c: c.train.steps == 1000),  # integral floats are ints
    ("full-rank", [f"train.seed={TRAIN_SEED_LIMIT - 1}"], lambda c: c.train.seed == TRAIN_SEED_LIMIT - 1),
    ("full-rank", ["optim.beta1=0", "optim.lr=1", "train.eval_batch_size=0"], lambda c: c.optim.beta1 == 0.0),
    ("full-rank", ["method.targets=lm_head,model.embed_tokens"], lambda c: len(c.method_cfg.targets) == 2),
])
def test_edge_values_are_accepted(method, overrides, check):
    assert check(build_config("nano", method, overrides))


def test_largest_train_seed_fits_the_micro_batch_seed():
    """The train.seed bound is what the loop's derived seed needs to stay a valid torch seed."""
    import torch

    from lowrank_lens.train.loop import _micro_seed

    torch.manual_seed(_micro_seed(TRAIN_SEED_LIMIT - 1, 10**14, 10**4))  # raises on overflow


@pytest.mark.parametrize("scale", ["nano", "micro"])
def test_module_table_matches_the_built_model(scale):
    """The rank bound reads the model's matrices from a table (no transformers import); it must be the model."""
    from torch import nn

    from lowrank_lens.methods.shapes import model_modules
    from lowrank_lens.model import build_model

    def kind(mod):
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            return "linear" if isinstance(mod, nn.Linear) else "embedding"
        return "norm" if getattr(mod, "weight", None) is not None else "other"

    model = build_model(MODEL_SHAPES[scale], device="meta")
    built = {n: (kind(m), tuple(m.weight.shape) if kind(m) != "other" else ()) for n, m in model.named_modules()}
    assert model_modules(MODEL_SHAPES[scale]) == built
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))


# ---- study files -------------------------------------------------------------------------------------------
BASE_STUDY = {"name": 'name = "t"', "methods": 'methods = ["full-rank"]', "scales": 'scales = ["nano"]',
              "seeds": "seeds = [0]", "downstream_tasks": "downstream_tasks = []"}

BAD_STUDIES = [
    ('seeds = "01"', "study seeds expects a list of integers"),
    ("seeds = [1.5]", "study seeds expects a list of integers"),
    ("seeds = [true]", "study seeds expects a list of integers"),
    ("seeds = [0, 0]", "study seeds repeat"),
    ("seeds = []", "at least one seed"),
    ("seeds = [-1]", "train.seed"),
    ('overrides = ["train.nope=1"]', "unknown train option(s) ['nope']"),
    ('overrides = ["train.steps=1e400"]', "train.steps"),
    ('overrides = ["train.steps=2.5"]', "train.steps"),
    ('overrides = ["steps"]', "section.field=value"),
    ('overrides = "train.steps=5"', "study overrides expects a list of strings"),
    ("overrides = [5]", "study overrides expects a list of strings"),
    ('[method_overrides]\ngalore = ["optim.lr=1e-2"]', "method_overrides"),
    ('[method_overrides]\nfull-rank = "optim.lr=1e-2"', "method_overrides"),
    ('[method_overrides]\nfull-rank = ["optim.lr=inf"]', "optim.lr"),
    ('[scale_overrides]\nmicro = ["train.steps=5"]', "scale_overrides"),
    ('methods = ["galore"]\n[scale_overrides]\nnano = ["method.rank=65"]', "run nano-galore-seed0: method.rank 65"),
    ('methods = ["full-rank", "full-rank"]', "study methods repeat full-rank"),
    ('scales = ["nano", "nano"]', "study scales repeat nano"),
    ('methods = ["sgd"]', "study method 'sgd' is unknown"),
    ('scales = ["2b"]', "study scale '2b' is unknown"),
    ('methods = "galore"', "study methods expects a list of strings"),
    ('metrics = ["nope"]', "study metric 'nope' is unknown"),
    ('metrics = ["spectra", "spectra"]', "study metrics repeat spectra"),
    ('metrics = "spectra"', "study metrics expects a list of strings"),
    ('metric_overrides = ["spectra.nope=1"]', "nope"),
    ('metric_overrides = ["spectra.threshold=abc"]', "spectra.threshold"),
    ('metric_overrides = ["nope.x=1"]', "study metric_overrides metric 'nope' is unknown"),
    ('metric_overrides = ["spectra"]', "metric_overrides"),
    ('metrics = ["spectra"]\nmetric_overrides = ["curvature.sequences=8"]', "curvature"),
    ('analysis_steps = "last"', "analysis_steps"),
    ("analysis_steps = 5", "study analysis_steps expects a string"),
    ("sequences = 0", "study sequences"),
    ("eval_batch_size = -1", "study eval_batch_size"),
    ('downstream_tasks = "lens_mc"', "study downstream_tasks expects a list of strings"),
    ('downstream_tasks = ["lens_mc", "lens_mc"]', "study downstream_tasks repeat"),
    ('downstream_tasks = [""]', "downstream_tasks"),
    ('downstream_tasks = ["lens_mc"]\ndownstream_seeds = []', "downstream_seeds"),
    ("downstream_seeds = [0.5]", "study downstream_seeds expects a list of integers"),
    ("downstream_seeds = [-1]", "downstream_seeds"),
    ("downstream_seeds = [4294967296]", "downstream_seeds"),
    ("downstream_seeds = [1, 1]", "study downstream_seeds repeat"),
    ("downstream_limit = -5", "study downstream_limit"),
    ("include_path = 3", "study include_path expects a string"),
    ('predict_features = ["es"]', "predict_features"),
    ('predict_features = ["nope.es"]', "predict_features"),
    ('predict_features = ["spectra.x", "spectra.x"]', "study predict_features repeat"),
    ("gpus_per_run = 0", "study gpus_per_run"),
    ('jobs = "2"', "study jobs expects an integer"),
    ("jobs = 2.0", "study jobs expects an integer"),
    ("jobs = 1e400", "study jobs expects an integer"),
    ("jobs = true", "study jobs expects an integer"),
    ("jobs = 0", "study jobs"),
    ('notes = "x"', "study notes expects a list of strings"),
    ("name = 5", "study name expects a string"),
    *[(f"name = {json.dumps(n)}", "study name") for n in
      ("../../X", "/tmp/abs", "a/b", ".hidden", "..", "", "a b", "x" * 101, "a\\b")],
]


def _study_text(snippet: str) -> str:
    keys = set(tomllib.loads(snippet))
    return "\n".join([line for key, line in BASE_STUDY.items() if key not in keys] + [snippet]) + "\n"


@pytest.mark.parametrize("snippet, fragment", BAD_STUDIES)
def test_bad_study_file_fails_at_load_and_dry_run(snippet, fragment, tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.toml"
    path.write_text(_study_text(snippet))
    with pytest.raises(LensError) as exc:
        load_spec(path)
    _one_line(str(exc.value), fragment)
    code, err = run_cli(["study", str(path), "--dry-run", "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 2 and err == f"error: {exc.value}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, content, fragment", [
    ("s.json", '{"name": null}', "study name expects a string"),
    ("s.json", '[{"name": "x"}]', "must hold a table"),
    ("s.json", '"x"', "must hold a table"),
    ("s.json", '{"jobs": NaN}', "study jobs expects an integer"),
    ("s.json", '{"name": "x", ', "cannot parse study file"),
    ("s.toml", b'name = "caf\xe9"\n', "not UTF-8"),
])
def test_bad_study_file_shapes(name, content, fragment, tmp_path):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LensError) as exc:
        load_spec(path)
    _one_line(str(exc.value), fragment)


def test_good_study_names_and_constructor_checks():
    spec = StudySpec(name="my-study_1.v2", methods=["full-rank"], scales=["nano"], seeds=[0], downstream_tasks=[])
    assert spec.name == "my-study_1.v2" and len(plan_runs(spec)) == 1
    with pytest.raises(LensError, match="plain folder name"):
        StudySpec(name="../escape", methods=["full-rank"], scales=["nano"], seeds=[0])


def test_named_presets_pin_their_methods(monkeypatch):
    """`paper` is the study's six methods, whatever else gets registered (item 3)."""
    import lowrank_lens.methods as methods

    six = ["full-rank", "galore", "fira", "cola", "sltrain", "relora"]
    registered = methods.method_names()
    monkeypatch.setattr(methods, "method_names", lambda: [*six, "newcomer"])
    assert load_spec("paper").methods == six
    assert load_spec("demo").methods == six
    # the zoo follows the registry (here: everything but spam)
    monkeypatch.setattr(methods, "method_names", lambda: [m for m in registered if m != "spam"])
    assert load_spec("zoo").methods == [m for m in registered if m != "spam"]


def test_zoo_is_the_paper_protocol_over_every_method_and_the_demo_takes_methods():
    from lowrank_lens.methods import method_names
    from lowrank_lens.study.presets import demo

    zoo, paper = load_spec("zoo"), load_spec("paper")
    assert zoo.methods == method_names() and set(paper.methods) < set(zoo.methods)
    assert (zoo.scales, zoo.seeds, zoo.downstream_tasks) == (paper.scales, paper.seeds, paper.downstream_tasks)
    assert len(plan_runs(zoo)) == len(method_names()) * len(paper.scales) * len(paper.seeds)
    assert demo(["full-rank", "apollo"]).methods == ["full-rank", "apollo"]
    with pytest.raises(LensError, match="study method 'nope' is unknown"):
        demo(["full-rank", "nope"])


# The shipped studies pin the study's six methods, so a new method plugin changes none of them.
@pytest.mark.parametrize("source, runs", [("demo", 6 * 3), ("paper", 6 * 3 * 3), (REPO / "examples" / "micro.toml", 6)])
def test_shipped_studies_still_validate(source, runs):
    spec = load_spec(source)
    assert len(plan_runs(spec)) == runs == len(spec.methods) * len(spec.scales) * len(spec.seeds)
