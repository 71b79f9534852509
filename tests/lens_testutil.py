"""Helpers shared by tests that start `python -m lowrank_lens` subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def cli_env() -> dict[str, str]:
    """Environment for `python -m lowrank_lens` subprocesses (inherits the session's data cache)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env
