"""Fault injection (issue 25 §2, §4): a report rebuild that is stopped, and processes that share a folder.

A rebuild stopped half-way (an error, Ctrl-C, SIGTERM) leaves the old report exactly as it was; a user's own
file in the report folder survives a rebuild; a kill between the two renames of the swap is undone by the
next command. A second `study` on a folder another process is running says who holds it; a second
`analyze` waits for the result the first is computing and reads it instead of computing it again.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from lens_testutil import run_cli

from lowrank_lens.errors import Terminated


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A study folder (the demo's spec, nothing trained) with a built report and an earlier figure in it."""
    from lowrank_lens.report import write_report
    from lowrank_lens.study.spec_files import load_spec, write_study_record

    folder = tmp_path / "study"
    write_study_record(load_spec("demo"), folder)
    write_report(folder)
    (folder / "report" / "figures" / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "report" / "figures" / "runs" / "loss.png").write_bytes(b"a figure of the earlier build")
    (folder / "report" / "tables" / "runs.csv").write_text("run\nx\n")
    return folder


@pytest.mark.parametrize("stop", [KeyboardInterrupt, lambda: Terminated(15), lambda: OSError("disk gone")])
def test_a_stopped_report_rebuild_leaves_the_old_report_whole(study, stop, monkeypatch):
    import lowrank_lens.report as report

    before = _tree(study / "report")
    real = report.render

    def render_then_stop(context):
        real(context)  # every figure and table of the new report is written by now
        raise stop()

    monkeypatch.setattr(report, "render", render_then_stop)
    with pytest.raises((KeyboardInterrupt, Terminated, OSError)):
        report.write_report(study)
    assert _tree(study / "report") == before
    assert sorted(p.name for p in study.iterdir() if p.name.startswith(".")) == []


def test_a_rebuild_keeps_a_users_file_and_replaces_the_reports_own(study):
    from lowrank_lens.report import write_report

    (study / "report" / "notes.md").write_text("mine")
    write_report(study)
    tree = _tree(study / "report")
    assert tree["notes.md"] == b"mine"
    assert "figures/runs/loss.png" not in tree and "index.html" in tree


def test_a_swap_killed_between_its_renames_is_undone_by_the_next_command(study):
    from lowrank_lens.tempdirs import sweep_stale

    before = _tree(study / "report")
    (study / "report").rename(study / ".old-report-999999999")  # the old report moved aside, then a kill
    done = sweep_stale(study)
    assert done and "restored report" in done[0]
    assert _tree(study / "report") == before


def test_a_second_study_on_a_folder_being_run_says_who_holds_it(tmp_path, capsys, monkeypatch):
    from lowrank_lens.study.runner import study_lock

    out = tmp_path / "study"
    with study_lock(out):
        code, err = run_cli(["study", "demo", "--out", str(out), "--stages", "report"], capsys, monkeypatch)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert f"pid {os.getpid()}" in err and "is running the study" in err
    assert not (out / "report").exists()


def test_a_second_analysis_waits_for_the_result_being_computed_and_reads_it(nano_run, caplog):
    """Process A holds the lock of a result it is computing; B asks for the same result, waits, and reads A's
    result from the cache instead of computing it (its compute would raise here)."""
    from lowrank_lens.analysis.cache import ResultStore
    from lowrank_lens.analysis.context import Context
    from lowrank_lens.analysis.runner import build_metrics, cache_key, cached_or_computed
    from lowrank_lens.analysis.subjects import RunRef

    caplog.set_level(logging.INFO, logger="lowrank_lens")
    metric = build_metrics(["spectra"])[0]
    ctx = Context()
    subject = metric.subjects([RunRef.open(nano_run)], None, None)[-1]
    key = cache_key(metric, subject, ctx)
    store = ResultStore(subject.home.run_dir)
    result = metric.compute(subject, ctx)  # A's result, ready to be cached
    waiting = threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting for pid" in record.getMessage():
                waiting.set()

    handler = Waiting()
    logging.getLogger("lowrank_lens").addHandler(handler)
    got: dict = {}
    try:
        with store.lock(metric.name, key, "A"):
            def ask():
                def refuse(*a):
                    raise AssertionError("computed a result another process is computing")
                metric.compute = refuse
                try:
                    got["how"] = cached_or_computed(metric, subject, ctx)[1]
                except BaseException as e:  # noqa: BLE001 (reported by the assertion below)
                    got["error"] = e
            b = threading.Thread(target=ask)
            b.start()
            waiting.wait(timeout=60)
            store.put(key, result)
        b.join(timeout=120)
    finally:
        logging.getLogger("lowrank_lens").removeHandler(handler)
    assert waiting.is_set() and got.get("how") == "cached", got
