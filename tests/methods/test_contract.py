"""Contract tests for every registered method (a seventh method is covered without new tests)."""

import pytest
import torch

from lowrank_lens.methods import get_method, method_names
from lowrank_lens.methods.base import check_param_groups, target_modules
from lowrank_lens.model import build_model
from lowrank_lens.presets import build_config
from lowrank_lens.train.checkpoint import load_model_state, save_checkpoint

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
