"""Adam-mini (optim/adam_mini.py, methods/adam_mini.py) against the official optimizer published on PyPI.

The reference is a dev-only test dependency, installed WITHOUT its dependencies (it only needs torch):

    pip install --no-deps adam-mini==1.1.1

`adam_mini.Adam_mini` (zyushun/Adam-mini 1.1.1; the repository's HEAD 402aadf differs only by duplicated import
lines) runs on one CPU process without torch.distributed: it takes `torch.cuda.device_count()` as the world size
and all-reduces its per-tensor blocks only when that exceeds 1, so the tests set its `world_size` to 1, the one
process they run, and no process group is needed. It is driven with the partition arguments of our model
(`dim` = hidden, `n_heads` = num_heads, Hugging Face parameter names) and, for `method.value_blocks=layer`, with
`wv_names` emptied as its README says. Its rules classify the parameters by name; the per-block second moments
it keeps (`vmean`) show its partition, which must equal ours tensor for tensor.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lens_testutil import require_package
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from lowrank_lens.config import ModelConfig
from lowrank_lens.distributed import DistEnv
from lowrank_lens.errors import LensError
from lowrank_lens.methods import get_method
from lowrank_lens.methods.adam_mini import block_rule
from lowrank_lens.methods.surgery import check_param_groups
from lowrank_lens.model import build_model
from lowrank_lens.optim.adam_mini import AdamMini
from lowrank_lens.presets import MODEL_SHAPES, build_config
from lowrank_lens.sharding import is_sharded
from lowrank_lens.train.parallel import Sharded

NAME = "adam-mini"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=4, vocab_size=64, max_seq_len=16)
STEPS = 8
LRS = [1e-2 * (1 - s / STEPS) + 1e-3 for s in range(STEPS)]  # a changing lr, as the schedule sets it
INSTALL = "official Adam-mini missing: pip install --no-deps adam-mini==1.1.1"
BAD_VALUES = [
    ("adam-mini", "method.value_blocks=head", "method.value_blocks must be one of neuron, layer, got 'head'"),
    ("adam-mini", "method.norm_no_decay=2", "method.norm_no_decay"),
]
"""Invalid settings of this method and a fragment of each one's one-line error (tests/faults/test_bad_config.py
runs them with every other method's)."""


def _ours(model, sets=()):
    cfg = build_config("nano", NAME, [f"model.{k}={getattr(CFG, k)}" for k in ("hidden_size", "intermediate_size",
                                                                           "num_layers", "num_heads", "vocab_size")]
                       + list(sets))
    method = get_method(NAME)(cfg.method_cfg, cfg)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    return cfg, opt


def _official(model, cfg, value_blocks):
    require_package("adam_mini", INSTALL)
    o = cfg.optim
    opt = importlib.import_module("adam_mini").Adam_mini(
        named_parameters=model.named_parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
        weight_decay=o.weight_decay, dim=cfg.model.hidden_size, n_heads=cfg.model.num_heads, verbose=False)
    opt.world_size = 1  # one process (module docstring)
    if value_blocks == "layer":
        opt.wv_names = set()
    return opt


def _step(model, opt, x, lr):
    for group in opt.param_groups:
        group["lr"] = lr
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("dtype", "wd", "value_blocks"), [
    (torch.float32, 0.0, "neuron"), (torch.float32, 0.1, "neuron"), (torch.float32, 0.1, "layer"),
    (torch.bfloat16, 0.1, "neuron"), (torch.bfloat16, 0.0, "layer")])
def test_equals_the_official_adam_mini_bitwise(base_model, batches, dtype, wd, value_blocks):
    ours_model, ref_model = copy.deepcopy(base_model).to(dtype), copy.deepcopy(base_model).to(dtype)
    cfg, ours = _ours(ours_model, [f"optim.weight_decay={wd}", f"method.value_blocks={value_blocks}",
                                   "method.norm_no_decay=True"])  # the official code spares the norms
    ref = _official(ref_model, cfg, value_blocks)
    for x, lr in zip(batches, LRS, strict=True):
        _step(ours_model, ours, x, lr)
        _step(ref_model, ref, x, lr)
    official = dict(ref_model.named_parameters())
    for name, p in ours_model.named_parameters():
        q = official[name]
        assert torch.equal(p, q), name
        mine, theirs = ours.state[p], ref.state[q]
        assert mine["step"] == theirs["step"] == STEPS
        assert torch.equal(mine["exp_avg"], theirs["m"].view(p.shape)), name
        # the same partition: one second moment per block, the same blocks, the same values
        assert mine["exp_avg_sq"].shape == theirs["vmean"].shape, name
        assert torch.equal(mine["exp_avg_sq"], theirs["vmean"]), name
    assert all(not torch.equal(p, b.to(dtype)) for p, b in zip(ours_model.parameters(), base_model.parameters(),
                                                                strict=True))  # every parameter trained


def test_the_norms_decay_by_default_unlike_the_official_code(base_model, batches):
    """One update from the same gradients: `method.norm_no_decay` changes the RMSNorm gains and nothing else."""
    runs = []
    for spare in (False, True):
        model = copy.deepcopy(base_model)
        _, opt = _ours(model, ["optim.weight_decay=0.1", f"method.norm_no_decay={spare}"])
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.0 if spare else 0.1]
        _step(model, opt, batches[0], LRS[0])
        runs.append(dict(model.named_parameters()))
    differ = {n for n in runs[0] if not torch.equal(runs[0][n], runs[1][n])}
    assert differ == {n for n in runs[0] if n.endswith("norm.weight")}


def test_partition_of_the_llama_parameters():
    """The block rule of every parameter name (the official one on LlamaForCausalLM names, module docstring of
    methods/adam_mini.py); test_equals_the_official_adam_mini_bitwise compares the blocks with the official ones."""
    expect = {"model.embed_tokens.weight": "row", "lm_head.weight": "row", "model.norm.weight": "tensor"}
    for i in range(CFG.num_layers):
        b = f"model.layers.{i}"
        expect |= {f"{b}.self_attn.{p}_proj.weight": "head" for p in "qk"}
        expect |= {f"{b}.self_attn.{p}_proj.weight": "row" for p in "vo"}
        expect |= {f"{b}.mlp.{p}_proj.weight": "row" for p in ("gate", "up", "down")}
        expect |= {f"{b}.{n}.weight": "tensor" for n in ("input_layernorm", "post_attention_layernorm")}
    model = build_model(CFG, seed=0)
    assert {n for n, _ in model.named_parameters()} == set(expect)
    for name, blocks in expect.items():
        assert block_rule(name, "neuron") == (blocks, name.endswith("norm.weight"))
        assert block_rule(name, "layer")[0] == ("tensor" if "v_proj" in name else blocks)
    with pytest.raises(LensError, match="no block rule for parameter 'model.layers.0.mlp.up_proj.bias'"):
        block_rule("model.layers.0.mlp.up_proj.bias", "neuron")


@pytest.mark.parametrize("value_blocks", ["neuron", "layer"])
def test_one_second_moment_per_block(base_model, batches, value_blocks):
    model = copy.deepcopy(base_model)
    cfg, opt = _ours(model, [f"method.value_blocks={value_blocks}"])
    _step(model, opt, batches[0], 1e-2)
    h, i, L, V, H = CFG.hidden_size, CFG.intermediate_size, CFG.num_layers, CFG.vocab_size, CFG.num_heads
    value = value_blocks == "neuron"  # v_proj: h rows each, else one block each in a group of its own
    expect = [{"exp_avg": 2 * V * h + L * ((2 if value else 1) * h * h + 3 * h * i),
               "exp_avg_sq": 2 * V + L * ((2 if value else 1) * h + 2 * i + h)},
              {"exp_avg": 2 * L * h * h, "exp_avg_sq": 2 * L * H},
              *([] if value else [{"exp_avg": L * h * h, "exp_avg_sq": L}]),
              {"exp_avg": (2 * L + 1) * h, "exp_avg_sq": 2 * L + 1}]  # the norms
    measured = [{k: sum(opt.state[p][k].numel() for p in g["params"]) for k in ("exp_avg", "exp_avg_sq")}
                for g in opt.param_groups]
    assert measured == expect
    assert [g["blocks"] for g in opt.param_groups] == ["row", "head", *([] if value else ["tensor"]), "tensor"]
    fp = get_method(NAME).footprint(cfg)
    assert list(fp.state) == expect and fp.state_bytes == 4 * sum(sum(g.values()) for g in expect)
    assert 16 * sum(g["exp_avg_sq"] for g in expect) < sum(g["exp_avg"] for g in expect)  # about 1/h of them


def test_one_step_moves_every_block_by_lr_in_rms():
    """From zero state the bias corrections cancel: ΔW = -lr·G/(√mean_b(G²) + eps), an RMS of lr per block."""
    g = torch.Generator().manual_seed(0)
    rows = torch.nn.Parameter(torch.zeros(6, 5))
    heads = torch.nn.Parameter(torch.zeros(6, 5))
    whole = torch.nn.Parameter(torch.zeros(7))
    scale = torch.tensor([1e-3, 1.0, 30.0, 0.5, 2.0, 1e2]).unsqueeze(1)  # blocks with very different gradients
    for p in (rows, heads):
        p.grad = torch.randn(6, 5, generator=g, dtype=torch.float64).float() * scale
    whole.grad = torch.randn(7, generator=g) * 4
    lr = 0.1
    opt = AdamMini([{"params": [rows], "blocks": "row"}, {"params": [heads], "blocks": "head", "head_rows": 2},
                    {"params": [whole]}], lr=lr, eps=1e-12)
    opt.step()

    def rms(t):
        return t.double().pow(2).mean().sqrt().item()

    assert [rms(r) for r in rows] == pytest.approx([lr] * 6, rel=1e-5)
    assert [rms(heads[k:k + 2]) for k in (0, 2, 4)] == pytest.approx([lr] * 3, rel=1e-5)
    assert rms(whole) == pytest.approx(lr, rel=1e-5)
    assert [rms(r) for r in heads] != pytest.approx([lr] * 6, rel=1e-2)  # a head shares one scale over its rows


def test_one_entry_per_block_is_adamw():
    """Blocks of one entry leave Adam: a (n, 1) tensor under "row" follows torch AdamW to rounding."""
    g = torch.Generator().manual_seed(1)
    a, b = (torch.nn.Parameter(torch.randn(8, 1, generator=torch.Generator().manual_seed(2))) for _ in range(2))
    mini = AdamMini([{"params": [a], "blocks": "row"}], lr=1e-2, weight_decay=0.1)
    adamw = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
    for _ in range(10):
        grad = torch.randn(8, 1, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        mini.step()
        adamw.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_config_validation():
    for bad in ("head", "Neuron", ""):
        with pytest.raises(LensError, match=r"^method.value_blocks must be one of neuron, layer, got") as err:
            build_config("nano", NAME, [f"method.value_blocks={bad}"])
        assert "\n" not in str(err.value)
    with pytest.raises(LensError, match="method.norm_no_decay"):
        build_config("nano", NAME, ["method.norm_no_decay=2"])
    with pytest.raises(ValueError, match="blocks must be one of"):
        AdamMini([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "blocks": "column"}])
    with pytest.raises(ValueError, match="head_rows 3 does not divide the 4 rows"):
        AdamMini([{"params": [torch.nn.Parameter(torch.zeros(4, 2))], "blocks": "head", "head_rows": 3}])
    with pytest.raises(ValueError, match="'row' blocks need 2-D parameters"):
        AdamMini([{"params": [torch.nn.Parameter(torch.zeros(4))], "blocks": "row"}])


def test_presets():
    for scale in MODEL_SHAPES:
        cfg = build_config(scale, NAME)
        o, m = cfg.optim, cfg.method_cfg
        assert (o.beta1, o.beta2, o.eps, o.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
        assert (m.value_blocks, m.norm_no_decay) == ("neuron", False)
        assert o.lr == (build_config(scale, "full-rank").optim.lr)  # AdamW's lr, as the official README says
        assert cfg.notes[0].startswith(f"Adam-mini {scale}: ")


def test_a_resharded_checkpoint_resumes_bitwise(tmp_path: Path, base_model, batches):
    """One-process FSDP2 (a 1-rank gloo group, in this process): the parameters and state are DTensors, the row
    blocks' second moments sharded, a checkpoint in the one-process format (whole tensors), loaded into a fresh
    sharded optimizer, continues bitwise as the unsharded run does."""
    plain = copy.deepcopy(base_model)
    _, plain_opt = _ours(plain)
    for x, lr in zip(batches, LRS, strict=True):
        _step(plain, plain_opt, x, lr)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        env = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
        models, opts = [], []
        for _ in range(2):
            model = copy.deepcopy(base_model)
            for layer in model.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            models.append(model)
            opts.append(_ours(model)[1])
        half = STEPS // 2
        for x, lr in zip(batches[:half], LRS[:half], strict=True):
            _step(models[0], opts[0], x, lr)
        row = opts[0].param_groups[0]["params"][0]
        assert is_sharded(row) and is_sharded(opts[0].state[row]["exp_avg_sq"])
        saved = Sharded(env).optimizer_state(opts[0])
        assert not any(is_sharded(v) for s in saved["state"].values() for v in s.values())  # whole tensors
        Sharded(env).load_model_state(models[1], Sharded(env).model_state(models[0]))
        Sharded(env).load_optimizer_state(opts[1], saved)
        for x, lr in zip(batches[half:], LRS[half:], strict=True):
            _step(models[1], opts[1], x, lr)
        assert is_sharded(opts[1].state[opts[1].param_groups[0]["params"][0]]["exp_avg_sq"])  # split again
        got = Sharded(env).model_state(models[1])
    finally:
        dist.destroy_process_group()
    for name, p in plain.named_parameters():
        assert torch.equal(got[name], p.detach()), name
