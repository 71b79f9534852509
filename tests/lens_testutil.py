"""Helpers shared by tests: `python -m lowrank_lens` subprocesses, single-threaded torch."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Skip reasons of tests whose optional packages are missing start with this; conftest.py repeats them in a
# banner at the end of the run, so a skipped reference check is never silent.
MISSING_OPTIONAL = "optional dependency missing"


def optional_packages_required() -> bool:
    """In CI (.ci/run sets LOWRANK_LENS_REQUIRE_OPTIONAL=1; CI=true also counts) a missing optional
    package fails its tests instead of skipping them: the README command installs every one."""
    return os.environ.get("LOWRANK_LENS_REQUIRE_OPTIONAL") == "1" or os.environ.get("CI", "").lower() == "true"


def require_package(name: str, install: str, module_level: bool = False) -> None:
    """Skip (loudly) or, in CI, fail when package `name` cannot be found; `install` is the fix."""
    import importlib.util

    import pytest

    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return
    message = f"{MISSING_OPTIONAL}: {name} ({install})"
    if optional_packages_required():
        pytest.fail(f"{message}; required here because LOWRANK_LENS_REQUIRE_OPTIONAL=1 or CI=true", pytrace=False)
    pytest.skip(message, allow_module_level=module_level)


def cli_env() -> dict[str, str]:
    """Environment for `python -m lowrank_lens` subprocesses (inherits the session's data cache)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch single-threaded inside, restored after: on the shared 2-core machine, 2-thread intra-op
    parallelism under load from other processes made a tiny-model HVP ~70x slower (0.07 s -> 5 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int | None, str]:
    """`lowrank-lens ARGS` in this process (no interpreter start-up): (exit code, stripped stderr)."""
    import pytest

    from lowrank_lens import cli

    monkeypatch.setattr(sys, "argv", ["lowrank-lens", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    return exc.value.code, err
