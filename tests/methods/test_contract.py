"""Contract tests for every registered method (a seventh method is covered without new tests)."""

import re
from pathlib import Path

import pytest
import torch

from lowrank_lens.analysis.plotting import method_colour
from lowrank_lens.errors import LensError
from lowrank_lens.methods import get_method, method_names
from lowrank_lens.methods.base import Method
from lowrank_lens.methods.surgery import check_param_groups, target_modules
from lowrank_lens.model import build_model
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.checkpoint import load_model_state, save_checkpoint
from lowrank_lens.runfolder.loading import LoadedCheckpoint, dense_model

METHODS = method_names()


def _setup(name, seed=0):
    cfg = build_config("nano", name)
    model = build_model(cfg.model, seed=seed)
    method = get_method(name)(cfg.method_cfg, cfg)
    torch.manual_seed(seed)
    model = method.prepare_model(model)
    return cfg, method, model


def _batch(vocab, b=4, t=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


@pytest.mark.parametrize("name", METHODS)
def test_builds_and_groups_every_trainable_parameter_once(name):
    cfg, method, model = _setup(name)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    assert any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_twenty_steps_lower_the_loss_on_a_fixed_batch(name):
    cfg, method, model = _setup(name)
    opt = method.build_optimizer(model, cfg.optim)
    x = _batch(cfg.model.vocab_size)
    losses = []
    for step in range(20):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step + 1, model, opt)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_gives_identical_logits(name, tmp_path):
    cfg, method, model = _setup(name, seed=1)
    opt = method.build_optimizer(model, cfg.optim)
    x = _batch(cfg.model.vocab_size)
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    model.eval()
    path = save_checkpoint(tmp_path / "step_000001", model.state_dict(), {"step": 1}, {"step": 1})
    _, _, fresh = _setup(name, seed=2)  # different init: everything must come from the checkpoint
    fresh.load_state_dict(load_model_state(path, verify=True))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, fresh(input_ids=x).logits)


@pytest.mark.parametrize("name", METHODS)
def test_dense_view_reproduces_each_layer(name):
    cfg, method, model = _setup(name)
    opt = method.build_optimizer(model, cfg.optim)
    x = _batch(cfg.model.vocab_size)
    for step in range(2):  # move away from init (B = 0 etc.)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        method.after_step(step + 1, model, opt)
    model.eval()
    dense = method.dense_weights(model)
    if not method.has_dense_view:
        assert dense is None and method.no_dense_reason
        return
    targets = dict(target_modules(model, method.cfg.targets))
    assert set(dense) == set(targets)
    for name_, mod in targets.items():
        w = dense[name_]
        inp = torch.randn(3, 5, w.shape[1])
        with torch.no_grad():
            torch.testing.assert_close(mod(inp), inp @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_the_dense_model_computes_what_the_trained_one_does(name):
    """The plain LLaMA readers get (train/loading.py dense_model) has the trained model's logits; a method
    that keeps the plain architecture hands out the model itself (no second copy of the weights)."""
    cfg, method, model = _setup(name)
    opt = method.build_optimizer(model, cfg.optim)
    x = _batch(cfg.model.vocab_size)
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    model.eval()
    dense = dense_model(LoadedCheckpoint(model, method, cfg, {"step": 1}, Path("run/ckpt/step_000001")))
    if not method.has_dense_view:
        assert dense is None
        return
    assert (dense is model) == (type(method).prepare_model is Method.prepare_model)
    with torch.no_grad():
        torch.testing.assert_close(dense(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_every_method_describes_itself_and_has_its_own_colour():
    """`description` is a required field (as a metric's `definition`), shown by `lowrank-lens list`, and so is
    `memory_formula` (docs/memory.md); colours are "#rrggbb", distinct, and not the grey that plots give an
    unknown method."""
    unknown = method_colour("no-such-method")
    colours = {}
    for name in METHODS:
        cls = get_method(name)
        assert "description" in vars(cls) and len(cls.description) > 20, f"{name} sets no description"
        assert "\n" not in cls.description
        assert "memory_formula" in vars(cls) and cls.memory_formula, f"{name}: docs/memory.md shows its formula"
        assert re.fullmatch(r"#[0-9a-f]{6}", cls.colour), f"{name} colour {cls.colour!r}"
        assert method_colour(name) == cls.colour != unknown
        colours.setdefault(cls.colour.lower(), []).append(name)
    assert all(len(v) == 1 for v in colours.values()), colours


# Distinct from every default and preset value, so each one is seen arriving (or not) in the optimizer.
OPTIM_PROBE = {"lr": 7e-3, "beta1": 0.81, "beta2": 0.97, "eps": 3e-7, "weight_decay": 0.05}
GROUP_KEY = {"lr": "lr", "beta1": "betas", "beta2": "betas", "eps": "eps", "weight_decay": "weight_decay"}


def _groups(name, sets):
    cfg = build_config("nano", name, sets)
    method = get_method(name)(cfg.method_cfg, cfg)
    return method.build_optimizer(method.prepare_model(build_model(cfg.model, seed=0)), cfg.optim).param_groups


def _group_value(group, field):
    value = group[GROUP_KEY[field]]
    return value[field == "beta2"] if GROUP_KEY[field] == "betas" else value


@pytest.mark.parametrize("name", METHODS)
def test_every_optim_field_is_read_or_refused(name):
    """Each optimizer field reaches every param group, unless the method declares it in `unused_fields`; then
    --set of it is an error naming the field to set instead, and that field reaches the groups (never a
    silent no-op: issue 12 item 11)."""
    unused = get_method(name).unused_fields
    read = [f for f in OPTIM_PROBE if f"optim.{f}" not in unused]
    for group in _groups(name, [f"optim.{f}={OPTIM_PROBE[f]}" for f in read]):
        for f in read:
            assert _group_value(group, f) == OPTIM_PROBE[f], f"{name} ignores optim.{f}"
    for key, other in unused.items():
        with pytest.raises(LensError, match=re.escape(f"{name} does not read {key}, it uses {other}")):
            build_config("nano", name, [f"{key}={OPTIM_PROBE[key.partition('.')[2]]}"])
        f = key.partition(".")[2]
        assert all(_group_value(g, f) == OPTIM_PROBE[f] for g in _groups(name, [f"{other}={OPTIM_PROBE[f]}"]))
    cfg = build_config("nano", name)
    for key, a, b, step in (("warmup_steps", 2, 4, 1), ("min_lr_ratio", 0.1, 0.5, cfg.train.steps - 1)):
        mult = []
        for v in (a, b):  # the schedule fields reach lr_multiplier
            c = build_config("nano", name, [f"optim.{key}={v}"])
            mult.append(get_method(name)(c.method_cfg, c).lr_multiplier(step))
        assert mult[0] != mult[1], f"{name} ignores optim.{key}"
