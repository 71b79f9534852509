import pytest

from lowrank_lens.config import RunConfig, TrainConfig, apply_overrides
from lowrank_lens.errors import LensError
from lowrank_lens.methods import get_method
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.files import run_config_from_dict


def test_overrides_are_typed_and_validated():
    cfg = build_config("nano", "full-rank", ["optim.lr=5e-3", "train.steps=7", "train.sinks=", "data.streaming=true"])
    assert cfg.optim.lr == 5e-3 and isinstance(cfg.train.steps, int) and cfg.train.steps == 7
    assert cfg.data.streaming is True and cfg.train.sinks == ()


@pytest.mark.parametrize("item, fragment", [
    ("optim.lrr=1", "unknown optim option"),
    ("optimizer.lr=1", "unknown config section"),
    ("train.steps=many", "train.steps expects int"),
    ("lr=3", "section.field=value"),
    ("train.precision=fp16", "train.precision 'fp16' is not one of"),
])
def test_bad_overrides_name_the_problem(item, fragment):
    with pytest.raises(LensError, match=fragment):
        build_config("nano", "full-rank", [item])


def test_round_trip_and_hash():
    cfg = build_config("micro", "full-rank")
    again = run_config_from_dict(cfg.to_dict())
    assert again == cfg and again.hash() == cfg.hash()
    full_rank = get_method("full-rank")
    assert apply_overrides(cfg, ["optim.lr=1e-2"], full_rank).hash() != cfg.hash()
    assert cfg.hash(exclude=("train.device",)) == apply_overrides(cfg, ["train.device=cpu"], full_rank).hash(
        exclude=("train.device",))
    with pytest.raises(LensError, match="was given the plugin of 'galore'"):
        RunConfig.from_dict(cfg.to_dict(), get_method("galore"))


def test_batch_must_divide():
    with pytest.raises(LensError, match="not divisible by train.micro_batch_size"):
        TrainConfig(total_batch_size=10, micro_batch_size=4)


def test_unknown_preset_and_method_list_valid_names():
    with pytest.raises(LensError, match="choose one of: nano, micro, 60m"):
        build_config("70m", "full-rank")
    with pytest.raises(LensError, match="unknown method 'adam'.*full-rank"):
        build_config("nano", "adam")
