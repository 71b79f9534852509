"""Published perplexities beside the runs (report/published.py, published_ppl.json): the packaged numbers are
the source tables' (spot checks against GaLore Table 2 and Fira Table 3 as the issue quotes them), every
entry names a registered method and a study scale, and the report's run table shows them for runs at a
study scale only, with the definition to compare them with."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank_lens.errors import LensError
from lowrank_lens.methods import method_names
from lowrank_lens.presets import MODEL_SHAPES
from lowrank_lens.report import published as pub
from lowrank_lens.report.build import runs_section
from lowrank_lens.report.collect import RunInfo, Study

GALORE_T2 = {"full-rank": (34.06, 25.08, 18.80, 15.56), "galore": (34.88, 25.36, 18.95, 15.64),
             "lora": (34.99, 33.92, 25.58, 19.21), "relora": (37.04, 29.37, 29.08, 18.33),
             "low-rank": (78.18, 45.51, 37.41, 142.53)}
SCALES = ("60m", "130m", "350m", "1b")


def test_the_packaged_numbers_are_the_source_tables():
    table = pub.published()
    for method, values in GALORE_T2.items():
        assert tuple(table[(method, s)].ppl for s in SCALES) == values
        assert {table[(method, s)].cite for s in SCALES} == {"GaLore T2"}
    assert tuple(table[("fira", s)].ppl for s in SCALES) == (31.06, 22.73, 16.85, 14.31)
    # unread tables are left out, not guessed
    for method in ("cola", "sltrain", "golore", "loro", "flora"):
        assert not any(m == method for m, _ in table), method


def test_every_entry_is_a_registered_method_at_a_study_scale():
    table = pub.published()
    assert {m for m, _ in table} <= set(method_names())
    assert {s for _, s in table} <= set(SCALES) <= set(MODEL_SHAPES)
    assert all(p.paper and p.setup and p.cite for p in table.values())
    assert pub.published_for("galore", "nano") is None
    assert pub.published_for("galore", "60m").cell == "34.88 (GaLore T2)"


@pytest.mark.parametrize("broken, fragment", [
    ({"values": [{"method": "galore", "source": "nowhere", "ppl": {"60m": 30.0}}]}, "KeyError"),
    ({"values": [{"method": "galore", "source": "s", "ppl": {"60m": "thirty"}}]}, "is not a number > 1"),
    ({"values": [{"method": "galore", "source": "s", "ppl": {"60m": 30.0}}] * 2}, "listed twice"),
])
def test_a_malformed_file_is_one_clear_error(broken, fragment):
    data = {"sources": {"s": {"cite": "X T1", "paper": "p", "setup": "s"}}, **broken}
    with pytest.raises(LensError, match=fragment):
        pub._check(data)


def _run(tmp: Path, method: str, scale: str) -> RunInfo:
    return RunInfo(name=f"{scale}-{method}", dir=tmp, config={"method": method, "scale": scale, "train": {"seed": 0}},
                   checkpoints=[{"step": 10, "tokens": 100, "val_ppl": 40.0, "val_ppl_reference": 39.0}])


def test_the_run_table_shows_published_values_at_study_scales_only(tmp_path):
    runs = [_run(tmp_path, "galore", "60m"), _run(tmp_path, "cola", "60m"), _run(tmp_path, "galore", "nano")]
    study = Study(tmp_path, {}, runs, [], {}, [], [], "")
    section = runs_section(study, tmp_path / "fig", "fig", tmp_path / "tables", "tables")
    table = section["table"]
    col = table.columns.index("published ppl")
    assert [row[col][0] for row in table.rows] == ["34.88 (GaLore T2)", "", ""]
    assert "compare it with val_ppl_ref" in section["note"] and "arXiv 2403.03507" in section["note"]
    # a study without study-scale runs has no such column and no source note
    small = runs_section(Study(tmp_path, {}, runs[2:], [], {}, [], [], ""), tmp_path / "f2", "f2",
                         tmp_path / "t2", "t2")
    assert "published ppl" not in small["table"].columns and "Published:" not in small["note"]

