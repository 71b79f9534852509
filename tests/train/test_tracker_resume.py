"""A resumed run continues its tracker run (train/logs.py): the checkpoint's resume state records the
TensorBoard log directory, and the resumed run writes into it with purge_step = resumed step + 1, so TensorBoard
reads one curve with each step once, even where the stopped process had logged past its last checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
from lens_testutil import require_package

from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.checkpoint import complete_checkpoints, load_resume_state
from lowrank_lens.train import train

require_package("tensorboard", "the tensorboard sink's test needs it: pip install -e '.[dev]'", module_level=True)

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402

STEPS = 8
OVERRIDES = [f"train.steps={STEPS}", "train.checkpoints=2", "train.eval_every=0", "train.log_every=1",
             "optim.warmup_steps=1", "train.sinks=tensorboard"]


def scalars(log_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one tag as TensorBoard reads the folder (every event file, orphaned data purged)."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def session_starts(log_dir) -> list[int]:
    """The steps of the SessionLog START events in the folder's event files, file by file in name order."""
    return [e.step for f in sorted(log_dir.glob("events.out.tfevents.*")) for e in EventFileLoader(str(f)).Load()
            if e.HasField("session_log") and e.session_log.status == e.session_log.START]


def jsonl(run_dir, kind: str, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["kind"] == kind]


def test_a_resumed_run_continues_its_tensorboard_run_with_each_step_once(tmp_path):
    cfg = build_config("nano", "full-rank", OVERRIDES)
    run_dir = train(cfg, tmp_path)
    tb = run_dir / "tensorboard"
    assert [s for s, _ in complete_checkpoints(run_dir)] == [0, 4, 8]
    for _, ckpt in complete_checkpoints(run_dir):  # the identity travels with every checkpoint's resume state
        assert load_resume_state(ckpt)["trackers"] == {"tensorboard": {"log_dir": "tensorboard"}}
    first = scalars(tb, "train/loss")
    assert [s for s, _ in first] == list(range(1, STEPS + 1))

    # The process died after it had logged steps 5-8 but before the step-8 checkpoint was complete: a
    # requeued run resumes from step 4 and logs steps 5-8 again.
    shutil.rmtree(run_dir / "ckpt" / "step_000008")
    assert train(cfg, tmp_path, resume=True) == run_dir
    assert [p.name for p in run_dir.iterdir() if p.is_dir() and p.name != "ckpt"] == ["tensorboard"]
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2  # the same folder, one event file per process
    assert session_starts(tb) == [0, 5]  # the fresh run purges from 0, the resumed one from step 4 + 1
    # The files hold steps 5-8 twice; the resumed writer's SessionLog START is what makes readers drop the first.
    raw = [e.step for f in sorted(tb.glob("events.out.tfevents.*")) for e in EventFileLoader(str(f)).Load()
           if e.HasField("summary") and any(v.tag == "train/loss" for v in e.summary.value)]
    assert raw == [*range(1, STEPS + 1), *range(5, STEPS + 1)]

    loss, ppl = scalars(tb, "train/loss"), scalars(tb, "val/val_ppl")
    assert [s for s, _ in loss] == list(range(1, STEPS + 1))  # each step once, in order: one curve
    assert [s for s, _ in ppl] == [0, 4, 8]
    for got, want in ((loss, jsonl(run_dir, "train", "loss")), (ppl, jsonl(run_dir, "val", "val_ppl"))):
        assert [s for s, _ in got] == [s for s, _ in want]  # the same series as log.jsonl, the source of truth
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # (float32 in the events)
    assert load_resume_state(run_dir / "ckpt" / "step_000008")["trackers"] == {
        "tensorboard": {"log_dir": "tensorboard"}}

