"""Every method's optimizer resumes bitwise from its saved state dict, in fp32 and in pure bf16.

One test over the registry (a new method's optimizer is covered without a new test): the nano preset's model
and optimizer through the plugin, 4 updates, the model and optimizer state saved and loaded (tensors and python
numbers only: torch.load(weights_only=True)), then 10 more updates on the original and on the resumed copy,
which must end with equal parameters. At nano the 10 updates cross each method's periodic event: the GaLore
family's subspace refresh and APOLLO's projection redraw (T 10; GoLore's is a random one), Flora's re-draw
(κ 10), SPAM's momentum reset (ΔT 8), LORO's exact step (K 10) and ReLoRA's merges (R 5), so counters, seed
chains, bases and moments must all come back. `after_step` runs after every update, as in the training loop.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from lowrank_lens.methods import get_method, method_names
from lowrank_lens.model import build_model
from lowrank_lens.presets import build_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SAVED_AT, STEPS = 4, 14


def _build(name: str, dtype: torch.dtype):
    cfg = build_config("nano", name)
    method = get_method(name)(cfg.method_cfg, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = method.prepare_model(build_model(cfg.model, seed=cfg.train.seed)).to(dtype)
    return method, model, method.build_optimizer(model, cfg.optim)


def _train(method, model, opt, batches, first_step: int) -> None:
    for step, x in enumerate(batches, start=first_step):
        torch.manual_seed(step)  # the same dropout masks (ReLoRA's, LoRA's) in both runs
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step + 1, model, opt)


def _only_tensors_and_numbers(obj) -> bool:
    if isinstance(obj, dict):
        return all(_only_tensors_and_numbers(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(_only_tensors_and_numbers(v) for v in obj)
    return isinstance(obj, torch.Tensor | int | float | str | bool) or obj is None


def _dtypes(opt: torch.optim.Optimizer) -> list[dict[str, torch.dtype]]:
    return [{k: v.dtype for k, v in opt.state[p].items() if torch.is_tensor(v)}
            for group in opt.param_groups for p in group["params"]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", method_names())
def test_state_dict_round_trip_continues_bitwise(name, dtype):
    method, model, opt = _build(name, DTYPES[dtype])
    g = torch.Generator().manual_seed(0)
    cfg = method.run
    batches = [torch.randint(0, cfg.model.vocab_size, (4, cfg.data.seq_len), generator=g) for _ in range(STEPS)]
    _train(method, model, opt, batches[:SAVED_AT], 0)
    state = opt.state_dict()
    assert _only_tensors_and_numbers(state["state"])
    buf = io.BytesIO()
    torch.save({"model": copy.deepcopy(model.state_dict()), "optimizer": state}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    method2, resumed, opt2 = _build(name, DTYPES[dtype])
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optimizer"])
    assert _dtypes(opt2) == _dtypes(opt)  # e.g. Flora's fp32 state under bf16 weights, which torch would cast
    _train(method, model, opt, batches[SAVED_AT:], SAVED_AT)
    _train(method2, resumed, opt2, batches[SAVED_AT:], SAVED_AT)
    for (n, pa), pb in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb), n
