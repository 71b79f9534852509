"""The report reads the in-training lens: runs with a lens.jsonl (train.lens) get a figure of each metric's
headline vs training step and a table of every row; runs without one leave the report as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import lowrank_lens as ll
from lowrank_lens.analysis.tables import read_csv
from lowrank_lens.report import write_report
from lowrank_lens.study.findings_stage import write_findings


def test_runs_with_a_lens_series_get_its_figure_and_table(tiny_study: Path, tmp_path: Path, pngs_only):
    pngs_only("lens_")  # the lens figure's PNG is checked; the metrics' ones are not
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study, ignore=shutil.ignore_patterns("report", "findings"))
    watched = sorted((study / "runs").iterdir())[:2]
    for run_dir in watched:  # the series train.lens would have written: spectra at each checkpoint
        run = ll.load_run(run_dir)
        lens = ll.LensCallback(("spectra",), every=1, out=run_dir / "lens.jsonl", device="cpu", sequences=4,
                               batch_size=4, name=run.name)
        for step in run.steps:
            lens.observe(run.checkpoint(step), step)
    write_findings(study)
    page = write_report(study)
    text = page.read_text()
    assert "figures/runs/lens_spectra.png" in text and "lens during training: spectra" in text
    assert 'id="fig-runs-lens_spectra"' in text  # drawn interactive by the page
    assert (page.parent / "figures" / "runs" / "lens_spectra.png").stat().st_size > 1000
    rows = read_csv(page.parent / "tables" / "lens.csv")
    assert {r["run"] for r in rows} == {d.name for d in watched}
    assert len(rows) == sum(len(ll.load_run(d).steps) for d in watched)


def test_without_a_series_the_report_has_no_lens_figure(report_page: Path):
    assert "fig-runs-lens_" not in report_page.read_text()
    assert not (report_page.parent / "tables" / "lens.csv").exists()
