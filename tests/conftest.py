"""Test-wide settings: offline hub, a shared tokenizer/row cache for the session, small thread counts."""

from __future__ import annotations

import compileall
import importlib.util
import os
import socket
from pathlib import Path

import pytest
from lens_testutil import MISSING_OPTIONAL

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of the two workers (pyproject addopts): one core each, so one
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch thread (set before torch is imported), no oversubscription
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def pytest_configure(config) -> None:  # noqa: ARG001
    """The package compiled to bytecode once, before any worker starts: where PYTHONDONTWRITEBYTECODE is set (as
    on this project's machines) no import writes it, and each of the ~90 interpreters the suite starts (the CLI,
    torchrun ranks, Slurm and submitit tasks) would compile every module again (about 0.4 s each)."""
    spec = importlib.util.find_spec("lowrank_lens")  # found, not imported: that alone takes seconds
    if not os.environ.get("PYTEST_XDIST_WORKER") and spec and spec.submodule_search_locations:
        compileall.compile_dir(spec.submodule_search_locations[0], quiet=1)


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache per test session: the nano tokenizer and rows are built once, then reused,
    also by the subprocesses the end-to-end tests start (they inherit the environment)."""
    cache = tmp_path_factory.mktemp("lens-cache")
    os.environ["LOWRANK_LENS_CACHE"] = str(cache)
    return cache


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every attempt to resolve a host name or open a non-loopback connection during the test, refused.

    Tests of offline behaviour assert the list is empty: "fails fast" means it never tried the network.
    """
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def _loopback(host: object) -> bool:
        return isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127."))

    def connect(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family == socket.AF_UNIX or _loopback(host):
            return real_connect(sock, address)
        attempts.append(f"connect {address}")
        raise OSError("network access attempted in an offline test")

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if host is None or _loopback(host):
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(f"resolve {host}")
        raise socket.gaierror(f"network access attempted in an offline test: {host}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """A banner for tests skipped because an optional package is missing (pytest -q shows only a count)."""
    reasons: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(rep, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        if MISSING_OPTIONAL in reason:
            key = reason[reason.index(MISSING_OPTIONAL):]
            reasons[key] = reasons.get(key, 0) + 1
    if reasons:
        terminalreporter.write_sep("!", "reference / optional checks NOT run", red=True, bold=True)
        for reason, n in sorted(reasons.items()):
            terminalreporter.write_line(f"{n} test(s) skipped: {reason}", red=True)


# The longest modules first, so that the two workers (each takes whole modules) do not end on one of them alone.
LONGEST_FIRST = ("tests/train/test_resume_and_ddp.py", "tests/study/test_submit.py", "tests/report/",
                 "tests/analysis/metrics/", "tests/methods/test_flora.py", "tests/methods/test_low_rank.py",
                 "tests/methods/test_apollo.py", "tests/methods/test_spam.py", "tests/imports/test_import.py",
                 "tests/study/test_study_runner.py", "tests/methods/test_golore.py", "tests/methods/test_loro.py")
ONE_WORKER_PACKAGES = ("tests/report/", "tests/analysis/metrics/")
"""Packages whose modules share expensive session fixtures (the report's tiny study, the tiny runs of every
method): each goes to one worker whole, so the fixture is built once and not once per worker."""
SAME_WORKER = {"slurm daemons": ("tests/study/test_submit.py", "tests/faults/test_local_slurm_helper.py")}
"""Modules that must not run at the same time: the helper's tests start processes named slurmd, which the
Slurm fixture's `local_slurm.sh up` would see as someone else's daemons and refuse to start beside."""


def pytest_collection_modifyitems(session, config, items) -> None:  # noqa: ARG001
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, p in enumerate(LONGEST_FIRST) if path.startswith(p)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order


def pytest_xdist_make_scheduler(config, log):
    """--dist loadscope (pyproject addopts), with a unit of work per module, per ONE_WORKER_PACKAGES entry or per
    SAME_WORKER group.
    (Not xdist_group marks with --dist loadgroup: xdist 3.8 tags the node ids for it, which pytest 9.2's
    node ids ignore, so those marks group nothing there.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrPackage(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            group = next((name for name, paths in SAME_WORKER.items() if path in paths), None)
            return group or next((p for p in ONE_WORKER_PACKAGES if path.startswith(p)), path)

    return ModuleOrPackage(config, log)
