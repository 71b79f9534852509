"""Progress output of long loops (issue 25 §5): the demo printed a line per Hessian-vector product, because
`Context.progress` logged every `total // 10` items, which is every item of a 16-item loop.

In a log (a file, CI, a pipe: stderr is not a terminal) a loop now writes at most five lines whatever its length
(the first once it has run a while, one per quarter it passes, its last item), each with the loop's name,
done/total, elapsed and eta; on a terminal it draws one tqdm bar instead, closed at the loop's end. A re-run of
the analysis logs no line per cached subject (only the per-metric count). The loops here started "long ago", so
they are past the few seconds a loop runs before it reports anything: no wall-clock assertions.
"""

from __future__ import annotations

import io
import logging
import sys
import time

import pytest

from lowrank_lens.analysis.context import Context, EvalSettings

DESC = "Hessian-vector products"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _LogFile(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture
def ctx() -> Context:
    return Context(EvalSettings(device="cpu"))


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    monkeypatch.delenv("LOWRANK_LENS_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger="lowrank_lens")
    return caplog


def _loop(ctx: Context, total: int, stop: int | None = None, desc: str = DESC) -> None:
    start = time.perf_counter() - 100.0  # a loop that has run for a while: it reports
    for i in range(1, (total if stop is None else stop) + 1):
        ctx.progress(desc, i, total, start)


def _lines(caplog: pytest.LogCaptureFixture, desc: str = DESC) -> list[str]:
    return [r.getMessage() for r in caplog.records if desc in r.getMessage()]


@pytest.mark.parametrize("total", [16, 1000, 7, 3, 2])
def test_a_loop_writes_at_most_five_lines_to_a_log(ctx, quiet_env, monkeypatch, total):
    monkeypatch.setattr(sys, "stderr", _LogFile())
    _loop(ctx, total)
    lines = _lines(quiet_env)
    assert 1 <= len(lines) <= 5, lines
    assert f": {total}/{total} (" in lines[-1], lines
    for line in lines:  # today's content: the loop, done/total, elapsed, eta
        assert line.strip().startswith(f"{DESC}: ") and "s, eta " in line, line
    assert sys.stderr.getvalue() == ""  # no bar drawn into the log


def test_one_item_and_empty_loops(ctx, quiet_env, monkeypatch):
    monkeypatch.setattr(sys, "stderr", _LogFile())
    _loop(ctx, 1)
    assert len(_lines(quiet_env)) == 1 and ": 1/1 (" in _lines(quiet_env)[0]
    quiet_env.clear()
    ctx.progress("nothing to do", 0, 0, time.perf_counter() - 100.0)
    _loop(ctx, 0, desc="nothing to do")
    assert _lines(quiet_env, "nothing to do") == []


def test_a_terminal_gets_one_bar_rather_than_lines(ctx, quiet_env, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _loop(ctx, 16)
    assert _lines(quiet_env) == []  # not a line per item (nor any): the bar is the progress
    out = term.getvalue()
    assert DESC in out and "16/16" in out, out  # the bar's final state shows the total
    assert "\r" in out  # drawn in place


def test_a_loop_stopped_early_has_its_bar_closed_by_the_next(ctx, quiet_env, monkeypatch):
    """Lanczos may stop before its steps (a breakdown) and activation similarity at its token budget: the
    loop never reaches its total; the next loop, or the end of the subject (end_progress), closes its bar."""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _loop(ctx, 16, stop=10)
    _loop(ctx, 4, desc="landscape directions")
    ctx.end_progress()
    out = term.getvalue()
    assert "10/16" in out and "4/4" in out, out
    assert _lines(quiet_env) == [] and _lines(quiet_env, "landscape directions") == []


def test_quiet_logging_draws_no_bar(ctx, caplog, monkeypatch):
    """The logger's level is the quiet switch (study training workers log warnings only)."""
    monkeypatch.delenv("LOWRANK_LENS_PROGRESS", raising=False)
    caplog.set_level(logging.WARNING, logger="lowrank_lens")
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _loop(ctx, 16)
    assert term.getvalue() == "" and _lines(caplog) == []


def test_reanalysis_logs_no_line_per_cached_subject(nano_run, tmp_path, caplog):
    from lowrank_lens.analysis.runner import analyze

    caplog.set_level(logging.INFO, logger="lowrank_lens")
    for _ in range(2):
        analyze([nano_run], metrics=["spectra"], plots=False, out=tmp_path / "analysis", cache_dir=tmp_path / "c")
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("[spectra ")]) == 3, messages  # the computed ones
    assert not [m for m in messages if m.endswith(": cached")], messages
    assert [m.split(" in ")[0].strip() for m in messages if " computed, " in m] == [
        "spectra: 3 computed, 0 cached", "spectra: 0 computed, 3 cached"]
