"""A method defined outside methods/ (here: in this test) needs nothing but its class: registered for the
test's duration (methods.registered), it resolves at every scale, trains, is read back through its reader and
takes part in the zoo study's plan, and the registry is as discovery found it afterwards."""

from __future__ import annotations

import torch

from lowrank_lens.methods import get_method, method_names, registered
from lowrank_lens.methods.base import Method, MethodPreset
from lowrank_lens.methods.reading import CheckpointReader
from lowrank_lens.presets import build_config, preset_names
from lowrank_lens.runfolder.checkpoint import complete_checkpoints
from lowrank_lens.runfolder.files import run_config_from_dict
from lowrank_lens.runfolder.loading import dense_model, load_checkpoint
from lowrank_lens.study.spec import plan_runs
from lowrank_lens.study.spec_files import load_spec
from lowrank_lens.train import train

NAME = "test-plain-adamw"


class PlainAdamW(Method):
    """Full-rank AdamW under another name: a plugin of nothing but Method's defaults and what it must say."""

    name = NAME
    description = "Full-rank AdamW registered by a test (every hook is Method's default)"
    colour = "#010203"
    memory_formula = "as full-rank"

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        return MethodPreset(notes=[f"{NAME} {scale}: the shared recipe"])


def test_a_plugin_registered_in_a_test_resolves_trains_loads_and_is_planned(tmp_path):
    before = method_names()
    assert NAME not in before
    with registered(PlainAdamW):
        assert method_names() == sorted([*before, NAME]) and get_method(NAME) is PlainAdamW
        for scale in preset_names():  # every scale resolves, and its config round-trips as config.json does
            cfg = build_config(scale, NAME)
            assert cfg.method == NAME and run_config_from_dict(cfg.to_dict()) == cfg
            baseline = build_config(scale, "full-rank")
            assert get_method(NAME).footprint(cfg) == get_method(baseline.method).footprint(baseline)

        cfg = build_config("nano", NAME, ["train.steps=2", "train.checkpoints=1", "train.eval_every=2",
                                          "train.log_every=1", "optim.warmup_steps=1"])
        run_dir = train(cfg, tmp_path)
        assert [s for s, _ in complete_checkpoints(run_dir)] == [0, 2]
        ck = load_checkpoint(run_dir / "ckpt" / "step_000002")
        assert isinstance(ck.method, PlainAdamW) and type(ck.method.reader) is CheckpointReader
        assert ck.step == 2 and dense_model(ck) is ck.model  # the plain architecture is its own dense view
        x = torch.randint(0, cfg.model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(ck.model(input_ids=x).logits).all()

        zoo = load_spec("zoo")
        assert NAME in zoo.methods and zoo.methods == method_names()
        runs = plan_runs(zoo)
        assert len(runs) == len(zoo.methods) * len(zoo.scales) * len(zoo.seeds)
        assert sorted({(r.scale, r.seed) for r in runs if r.method == NAME}) == sorted(
            (s, seed) for s in zoo.scales for seed in zoo.seeds)
    assert method_names() == before and NAME not in load_spec("zoo").methods
