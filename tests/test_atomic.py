"""Atomic writes: complete files only, and the permissions a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from lowrank_lens import atomic
from lowrank_lens.atomic import atomic_path, write_text_atomic


def test_written_file_has_umask_permissions_not_mkstemp_0600(tmp_path):
    out = tmp_path / "report.html"
    write_text_atomic(out, "<html></html>")
    # 0666 minus the process umask, as open() gives: 0644 with the usual umask 022 (mkstemp alone gives 0600).
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~atomic._UMASK


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "table.csv"
    write_text_atomic(out, "old\n")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["table.csv"]
