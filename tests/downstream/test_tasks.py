"""Task arguments: presets, local JSONL and YAML tasks, groups, and hub tasks failing fast offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowrank_lens.downstream import PRESETS, TASKS_DIR, evaluate_downstream
from lowrank_lens.downstream.taskspec import resolve_tasks, task_manager
from lowrank_lens.errors import LensError

LENS_MC = TASKS_DIR / "lens_mc" / "lens_mc.jsonl"


def _rows(lines: slice) -> list[str]:
    return LENS_MC.read_text().splitlines()[lines]


def _mc_yaml(path: Path, task: str, data: Path, dataset_path: str = "json") -> None:
    kwargs = f"dataset_kwargs:\n  data_files:\n    test: {data}\n" if dataset_path == "json" else ""
    path.write_text(f"task: {task}\ndataset_path: {dataset_path}\n{kwargs}output_type: multiple_choice\n"
                    "test_split: test\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
                    "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
                    "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n")


def test_lens_mc_is_well_formed():
    rows = [json.loads(line) for line in LENS_MC.read_text().splitlines()]
    assert 40 <= len(rows) <= 60
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["label"] < 4


def test_jsonl_task(nano_runs: dict[str, Path], tmp_path: Path):
    data = tmp_path / "py-quiz.jsonl"
    data.write_text("\n".join(_rows(slice(0, 5))) + "\n")
    (row,) = evaluate_downstream([nano_runs["full-rank"]], [str(data)], bootstrap_iters=50)
    assert row["task"] == "py_quiz" and row["n"] == 5 and 0 <= row["acc"] <= 1 and "acc_norm" in row
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"], "label": 0}\n')
    with pytest.raises(LensError, match="bad.jsonl:1"):
        evaluate_downstream([nano_runs["full-rank"]], [str(bad)])


def test_include_path_group_averages_like_lm_eval(nano_runs: dict[str, Path], tmp_path: Path):
    inc = tmp_path / "tasks"
    inc.mkdir()
    for name, part in (("q_a", slice(0, 6)), ("q_b", slice(6, 10))):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(_rows(part)) + "\n")
        _mc_yaml(inc / f"{name}.yaml", name, tmp_path / f"{name}.jsonl")
    (inc / "grp.yaml").write_text("group: q_grp\ntask: [q_a, q_b]\naggregate_metric_list:\n"
                                  "  - {metric: acc, weight_by_size: false}\n")
    rows = evaluate_downstream([nano_runs["cola"]], ["q_grp", "q_a", "q_b"], include_path=str(inc),
                               bootstrap_iters=50)
    by = {r["task"]: r for r in rows}
    assert by["q_grp"]["n"] == 10
    assert by["q_grp"]["acc"] == pytest.approx((by["q_a"]["acc"] + by["q_b"]["acc"]) / 2)


def test_hub_dataset_offline_fails_fast_with_recipe(nano_runs: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, network_attempts: list):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inc = tmp_path / "tasks"
    inc.mkdir()
    _mc_yaml(inc / "hubby.yaml", "hubby", Path("unused"), dataset_path="someone/not-on-this-machine")
    with pytest.raises(LensError, match="dataset_path: json") as e:
        evaluate_downstream([nano_runs["full-rank"]], ["hubby"], include_path=str(inc))
    assert "\n" not in str(e.value)
    assert network_attempts == []  # failing fast = failing without trying the network


def test_builtin_hub_task_and_unknown_name_fail_fast(nano_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                     network_attempts: list):
    """A real lm-eval task (piqa: dataset on the hub) offline, and a name lm-eval does not know: one-line
    LensErrors without any attempt to reach the network (what made them fast; the time itself is not
    asserted: it depends on the machine's load)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LensError, match="unreachable.*dataset_path: json") as e1:
        evaluate_downstream([nano_runs["full-rank"]], ["piqa"])
    with pytest.raises(LensError, match="unknown lm-eval task 'no_such_task_xyz'") as e2:
        evaluate_downstream([nano_runs["full-rank"]], ["no_such_task_xyz"])
    assert "\n" not in str(e1.value) and "\n" not in str(e2.value)
    assert network_attempts == []
    # Every preset names tasks that lm-eval 0.4.13 knows (the index is cached now: no extra cost).
    names = [s.name for s in resolve_tasks(list(PRESETS))]
    assert set(names) <= set(task_manager(resolve_tasks(names)).all_tasks)
