"""Rounding order of the dense views in bf16 (issue 12 item 12): SLTrain scales A before the product as the
official kernel does, and ReLoRA's dense view is bitwise the weight its merge leaves.

Both differences vanish in fp32 to 1e-7 and at power-of-two scales exactly, so these tests run in bf16 at a
scale alpha / r that is not a power of two, where the other order is measurably different (asserted, so the
test can tell the orders apart).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowrank_lens.methods import get_method
from lowrank_lens.methods.relora import ReLoRALinear
from lowrank_lens.methods.sltrain import SLTrainLinear, SparseLowRankLinear, build_weight, sample_support
from lowrank_lens.model import build_model
from lowrank_lens.presets import build_config

BF16 = torch.bfloat16


def _official_weight(a, b, values, index, scale):
    """SLTrain's SpLoRaLinear.forward passes `lora_A * scale` to its kernel, which forms W = B·(A·s), then
    scatter-adds the sparse values (docs/methods.md §5.1); transcribed from that description."""
    w = b @ (a * scale)
    w.view(-1).index_add_(0, index, values)
    return w


def _case(seed=0, n_in=96, n_out=80, r=16, nnz=200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, n_in, generator=g).to(BF16).requires_grad_()
    a = (torch.rand(r, n_in, generator=g) * 2 - 1).div(n_in ** 0.5).to(BF16).requires_grad_()
    b = (torch.randn(n_out, r, generator=g) * 0.05).to(BF16).requires_grad_()
    v = (torch.rand(nnz, generator=g) * 2 - 1).div(n_in ** 0.5).to(BF16).requires_grad_()
    return g, x, a, b, v, sample_support(n_out * n_in, nnz, g)


def test_sltrain_function_follows_the_official_order_bitwise():
    g, x, a, b, v, idx = _case()
    scale = 24.0 / 16  # alpha / r = 1.5
    ad, bd, vd = a.detach(), b.detach(), v.detach()
    w = _official_weight(ad, bd, vd, idx, scale)
    other = (bd @ ad) * scale
    other.view(-1).index_add_(0, idx, vd)
    assert not torch.equal(w, other)  # the orders differ at this scale in bf16
    assert torch.equal(build_weight(ad, bd, vd, idx, scale), w)
    y = SparseLowRankLinear.apply(x, a, b, v, idx, scale)
    assert torch.equal(y, F.linear(x.detach(), w))
    # Backward as the kernel with A·s as its input: dB = dW (A s)^T; autograd then gives dA = s (B^T dW).
    gy = torch.randn(y.shape, generator=g).to(BF16)
    dx, da, db, dv = torch.autograd.grad(y, (x, a, b, v), gy)
    g2, x2 = gy.reshape(-1, gy.shape[-1]), x.detach().reshape(-1, x.shape[-1])
    dw = g2.t() @ x2
    assert torch.equal(db, dw @ (ad * scale).t())
    assert torch.equal(da, (bd.t() @ dw) * scale)
    assert torch.equal(dv, dw.view(-1)[idx]) and torch.equal(dx, (g2 @ w).view_as(x))


def test_sltrain_layer_and_dense_view_follow_the_official_order():
    cfg = build_config("nano", "sltrain", ["method.alpha=24", "method.rank=16", "train.precision=bf16-pure"])
    method = get_method("sltrain")(cfg.method_cfg, cfg)
    model = method.prepare_model(build_model(cfg.model, seed=0)).to(BF16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SLTrainLinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    dense = method.dense_weights(model)
    for m in (m for m in model.modules() if isinstance(m, SLTrainLinear)):
        assert m.scale == 1.5
        w = _official_weight(m.lora_A.detach(), m.lora_B.detach(), m.sparse_value.detach(), m.sparse_index, 1.5)
        assert torch.equal(dense[m.layer_name], w)
        x = torch.randn(4, m.in_features, generator=g).to(BF16)
        with torch.no_grad():
            assert torch.equal(m(x), F.linear(x, w))


def test_relora_dense_view_equals_the_merge_bitwise_in_bf16():
    cfg = build_config("nano", "relora", ["method.alpha=5", "train.precision=bf16-pure"])  # scale 5/16
    method = get_method("relora")(cfg.method_cfg, cfg)
    model = method.prepare_model(build_model(cfg.model, seed=0)).to(BF16)
    relora = [m for m in model.modules() if isinstance(m, ReLoRALinear)]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in relora:  # B = 0 at init: give the low-rank part a value
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    dense = {k: w.clone() for k, w in method.dense_weights(model).items()}
    in_fp32 = {m.layer_name: (m.weight.float() + m.scale * (m.lora_B.float() @ m.lora_A.float())).to(BF16)
               for m in relora}
    for m in relora:
        m.merge()
    assert all(torch.equal(dense[m.layer_name], m.weight) for m in relora)
    assert dense[relora[0].layer_name].dtype == BF16
    assert any(not torch.equal(in_fp32[m.layer_name], m.weight) for m in relora)  # the old fp32 view differs
