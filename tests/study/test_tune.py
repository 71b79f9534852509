"""The tune stage (study/tune.py): each (scale, method)'s lr is the argmin of its proxies' final validation
losses, the runs train with it and record where it came from, a diverging proxy is a data point, a rerun
trains nothing, and the stage is one entry of the stage table both runners read."""

from __future__ import annotations

import csv
import math

import pytest

from lowrank_lens.errors import LensError
from lowrank_lens.runfolder.checkpoint import complete_checkpoints, read_meta
from lowrank_lens.runfolder.files import load_run_config
from lowrank_lens.study import train_stage, tune
from lowrank_lens.study.presets import PAPER_METHODS, demo, demo_tuned_lrs
from lowrank_lens.study.runner import STAGES, run_study
from lowrank_lens.study.spec import StudySpec, plan_proxies, plan_runs
from lowrank_lens.study.stage_table import STAGE_TABLE
from lowrank_lens.study.status import study_status
from lowrank_lens.study.tune import proxy_runs_dir

TINY = ["train.steps=8", "train.checkpoints=2", "train.eval_every=0", "train.log_every=4"]
# GaLore with its update scaled by 1e30: lr 1e-28 trains (updates of order 100), lr 1e-2 (a grid multiplier of
# 1e26) overflows within a few steps (a real divergence: a non-finite loss, not a mocked one). Where the edge
# lies between the two depends on the corpus (the embedded one differs with and without python3-doc), so the
# two are 26 orders of magnitude apart.
EXPLODING_GALORE = ["method.scale=1e30", "optim.lr=1e-28"]


def tuned_spec(**kw) -> StudySpec:
    base = dict(name="t", methods=["full-rank"], scales=["nano"], seeds=[0], overrides=TINY, metrics=["spectra"],
                downstream_tasks=[], sequences=8, eval_batch_size=8, tune=True, tune_grid=[0.5, 1, 2, 4],
                tune_fraction=0.5)
    return StudySpec(**{**base, **kw})


def final_val_loss(run_dir) -> float:
    last = [p for _, p in complete_checkpoints(run_dir) if p.name != "resume"][-1]
    return float(read_meta(last)["val"]["val_loss"])


def table(study) -> list[dict[str, str]]:
    with open(study / "tune" / "tune.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_tuned_lr_is_the_argmin_of_the_proxies_and_the_runs_train_with_it(tmp_path):
    spec = tuned_spec()
    run_study(spec, tmp_path, stages=("tune", "train"))
    proxies = plan_proxies(spec)
    assert [p.lr for p in proxies] == [0.0015, 0.003, 0.006, 0.012]  # the nano preset's 3e-3 x the grid
    losses = {p.lr: final_val_loss(proxy_runs_dir(tmp_path) / p.run.run_name) for p in proxies}
    assert all(math.isfinite(v) for v in losses.values()) and len(set(losses.values())) == len(losses)
    best = min(losses, key=losses.get)
    for p in proxies:  # half the run's 8 steps, the selection seed, checkpoints only at the end
        cfg = load_run_config(proxy_runs_dir(tmp_path) / p.run.run_name)
        assert (cfg.train.steps, cfg.train.seed, cfg.optim.lr) == (4, 1000, p.lr)
    run = load_run_config(tmp_path / "runs" / "nano-full-rank-seed0")
    assert run.optim.lr == best and run.train.steps == 8 and run.train.seed == 0
    assert any("chosen by the study's tune stage" in n and f"{best:g}" in n for n in run.notes)
    rows = table(tmp_path)
    assert [float(r["lr"]) for r in rows if r["chosen"] == "True"] == [best]
    assert {float(r["lr"]): float(r["val_loss"]) for r in rows} == pytest.approx(losses)
    assert "tune       done (4 proxy runs); lr nano full-rank" in study_status(tmp_path)


def test_a_diverging_proxy_is_a_data_point_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    spec = tuned_spec(methods=["galore"], method_overrides={"galore": EXPLODING_GALORE}, tune_grid=[1, 1e26],
                      tune_fraction=1.0)
    run_study(spec, tmp_path, stages=("tune", "train"))
    rows = {float(r["lr"]): r for r in table(tmp_path)}
    assert rows[0.01]["status"] == "diverged" and int(rows[0.01]["diverged_at"]) >= 1 and not rows[0.01]["val_loss"]
    assert (proxy_runs_dir(tmp_path) / "nano-galore-lr0.01" / "diverged.json").is_file()
    assert rows[1e-28]["status"] == "ok" and rows[1e-28]["chosen"] == "True"
    assert "diverged: lr 0.01" in rows[1e-28]["note"]
    assert load_run_config(tmp_path / "runs" / "nano-galore-seed0").optim.lr == 1e-28
    assert "1 diverged" in study_status(tmp_path)

    calls = []
    for trainer in (tune, train_stage):  # the proxies' and the runs' trainer
        monkeypatch.setattr(trainer, "train", lambda *a, **k: calls.append(a))
    run_study(spec, tmp_path, stages=("tune", "train"))  # every proxy and run finished or diverged: nothing
    assert calls == []


def test_past_an_edge_the_grid_extends_one_step_at_a_time_up_to_tune_extend(tmp_path):
    spec = tuned_spec(tune_grid=[0.5, 1], tune_extend=2)
    run_study(spec, tmp_path, stages=("tune",))  # (the preset's lr 3e-3 is not this length's best: see above)
    rows = table(tmp_path)
    lrs = sorted(float(r["lr"]) for r in rows)
    losses = {float(r["lr"]): final_val_loss(proxy_runs_dir(tmp_path) / r["run"]) for r in rows}
    best = min(losses, key=losses.get)
    assert [float(r["lr"]) for r in rows if r["chosen"] == "True"] == [best]
    assert lrs[:2] == [0.0015, 0.003] and len(lrs) <= 4
    # each added point is one grid step (x2) past the best lr of the points before it
    for k in range(2, len(lrs)):
        before = {lr: losses[lr] for lr in lrs[:k]}
        assert min(before, key=before.get) == lrs[k - 1] and lrs[k] == pytest.approx(2 * lrs[k - 1])
    # it stopped because the best lr is inside what was tried, or because the budget (2) was spent
    assert best != lrs[-1] or len(lrs) == 4
    run_study(spec, tmp_path, stages=("train",))
    run = load_run_config(tmp_path / "runs" / "nano-full-rank-seed0")
    assert run.optim.lr == best and "+ up to 2 past an edge" in run.notes[-1]


def test_every_proxy_diverging_is_one_clear_error(tmp_path):
    spec = tuned_spec(methods=["galore"], method_overrides={"galore": EXPLODING_GALORE}, tune_grid=[1e26])
    with pytest.raises(LensError, match="every proxy of nano galore diverged .*smaller multipliers"):
        run_study(spec, tmp_path, stages=("tune", "train"))
    assert not (tmp_path / "runs").exists()  # nothing trained on a choice that does not exist


@pytest.mark.parametrize(("kw", "match"), [
    (dict(tune_grid=[]), "tune_grid is empty"),
    (dict(tune_grid=[1, 0]), "distinct positive multipliers"),
    (dict(tune_grid=[2, 2]), "distinct positive multipliers"),
    (dict(tune_fraction=0.0), r"tune_fraction 0.0 must be in \(0, 1\]"),
    (dict(tune="yes"), "study tune expects true or false"),
    (dict(tune_grid=[1, "2"]), "tune_grid expects a list of numbers"),
    (dict(tune_grid=[1000]), "tune proxy nano-full-rank-lr3: optim.lr must be in"),
])
def test_bad_tune_fields_are_one_clear_error(kw, match):
    with pytest.raises(LensError, match=match):
        tuned_spec(**kw)


def test_without_tune_nothing_is_planned_and_the_stage_is_skipped(tmp_path):
    spec = tuned_spec(tune=False)
    assert plan_proxies(spec) == []
    run_study(spec, tmp_path, stages=("tune",))
    assert not (tmp_path / "tune").exists()


def test_one_stage_table_in_run_order():
    assert tuple(s.name for s in STAGE_TABLE) == STAGES
    names = [s.name for s in STAGE_TABLE]
    for s in STAGE_TABLE:  # a stage waits only on stages before it
        assert all(names.index(a) < names.index(s.name) for a in s.after), s


def test_the_demo_trains_with_the_shipped_tuned_lrs():
    lrs = demo_tuned_lrs()
    assert set(lrs) == set(PAPER_METHODS)
    runs = plan_runs(demo())
    assert {r.method: r.cfg.optim.lr for r in runs} == lrs
    assert any("tuned for this shape" in n for n in demo().notes)
    # the shipped table's chosen rows are the argmin of its own losses, per method
    from importlib import resources

    text = (resources.files("lowrank_lens.study") / "demo_tune.csv").read_text()
    by_method: dict[str, list[dict[str, str]]] = {}
    for r in csv.DictReader(text.splitlines()):
        by_method.setdefault(r["method"], []).append(r)
    for method, rows in by_method.items():
        ok = [r for r in rows if r["status"] == "ok"]
        assert float(min(ok, key=lambda r: float(r["val_loss"]))["lr"]) == lrs[method]
