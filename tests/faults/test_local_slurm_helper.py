"""scripts/local_slurm.sh touches only what it started or wrote (issue 25 §4): `down` stops the daemons named by
its own pid files (and munged only when `up` started it), never a Slurm daemon it did not start nor a process a
stale pid file names; `up` refuses while foreign Slurm daemons run; a config it did not write is kept and put
back by `down`. Each test failed on the script before its fix.

No Slurm is needed: the "daemons" are copies of `sleep` named slurmd, slurmctld or munged (a process's comm is
its executable's name), and the state folder and the config are temporary paths (LENS_SLURM_DIR,
LENS_SLURM_CONF).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_slurm.sh"
SLEEP = shutil.which("sleep") or "/bin/sleep"


class Processes:
    """Long sleeps under chosen names, each killed at the end of the test if still running."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str) -> subprocess.Popen:
        exe = self.folder / name
        if not exe.exists():
            shutil.copy(SLEEP, exe)
        proc = subprocess.Popen([str(exe), "300"])
        self.procs.append(proc)
        return proc


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    folder = tmp_path / "bin"
    folder.mkdir()
    procs = Processes(folder)
    yield procs
    for proc in procs.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    """The script's state folder and its config, both temporary."""
    return tmp_path / "state", tmp_path / "etc" / "slurm.conf"


def helper(command: str, paths: tuple[Path, Path], **env_vars: str) -> subprocess.CompletedProcess:
    state, conf = paths
    env = {**os.environ, "LENS_SLURM_DIR": str(state), "LENS_SLURM_CONF": str(conf), **env_vars}
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=60)


def alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_down_stops_only_the_daemons_its_pid_files_name(processes, paths):
    state, _ = paths
    state.mkdir()
    foreign = [processes.start("slurmd"), processes.start("slurmctld")]
    ours = {name: processes.start(name) for name in ("slurmd", "slurmctld")}
    for name, proc in ours.items():
        (state / f"{name}.pid").write_text(f"{proc.pid}\n")

    res = helper("down", paths)

    assert res.returncode == 0, res.stderr
    for proc in ours.values():
        assert proc.wait(timeout=10) is not None
    assert all(alive(p) for p in foreign), "down stopped a Slurm daemon it did not start"
    assert not (state / "slurmd.pid").exists() and not (state / "slurmctld.pid").exists()


def test_down_never_kills_what_a_stale_pid_file_names(processes, paths):
    state, _ = paths
    state.mkdir()
    unrelated = processes.start("sleep")  # took the pid a slurmd once had
    foreign = processes.start("slurmd")
    for name in ("slurmd.pid", "slurmctld.pid", "munged.started"):
        (state / name).write_text(f"{unrelated.pid}\n")

    res = helper("down", paths)

    assert res.returncode == 0, res.stderr
    assert alive(unrelated), "down killed an unrelated process named by a stale pid file"
    assert alive(foreign), "down stopped a Slurm daemon it did not start"


def test_down_stops_munged_only_when_up_started_it(processes, paths):
    state, _ = paths
    state.mkdir()
    foreign = processes.start("munged")
    ours = processes.start("munged")
    (state / "munged.started").write_text(f"{ours.pid}\n")

    res = helper("down", paths)

    assert res.returncode == 0, res.stderr
    assert ours.wait(timeout=10) is not None, "down left running the munged that up started"
    assert alive(foreign), "down stopped a munged that up did not start"
    assert not (state / "munged.started").exists()


def test_up_refuses_while_slurm_daemons_it_did_not_start_run(processes, paths):
    state, conf = paths
    foreign = processes.start("slurmd")

    res = helper("up", paths)

    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and f"slurmd pid {foreign.pid}" in err and "stop them" in err, err
    assert alive(foreign)
    assert not conf.exists() and not state.exists(), "up changed the machine before refusing"


def test_config_it_did_not_write_is_kept_once_and_put_back_by_down(paths):
    state, conf = paths
    conf.parent.mkdir()
    original = b"# the site's own Slurm\nClusterName=site\n"
    conf.write_bytes(original)
    conf.chmod(0o600)

    for _ in range(2):  # a second run keeps the original, not its own config
        res = helper("config", paths)
        assert res.returncode == 0, res.stderr
        assert conf.read_text().startswith("# Written by lowrank-lens scripts/local_slurm.sh")
        assert "SlurmdPidFile=" + str(state / "slurmd.pid") in conf.read_text()
        assert (state / "slurm.conf.orig").read_bytes() == original

    res = helper("down", paths)

    assert res.returncode == 0, res.stderr
    assert conf.read_bytes() == original and conf.stat().st_mode & 0o777 == 0o600
    assert not (state / "slurm.conf.orig").exists()


def test_down_removes_the_config_up_created_where_there_was_none(paths):
    state, conf = paths
    assert helper("config", paths).returncode == 0
    assert conf.is_file()

    res = helper("down", paths)

    assert res.returncode == 0, res.stderr
    assert not conf.exists() and not (state / "slurm.conf.absent").exists()


def test_a_config_replaced_after_up_is_neither_overwritten_nor_removed(paths):
    state, conf = paths
    assert helper("config", paths).returncode == 0
    conf.write_text("ClusterName=someone-else\n")

    res = helper("config", paths)
    assert res.returncode == 1 and "was replaced" in res.stderr, res.stderr
    res = helper("down", paths)

    assert res.returncode == 0 and "was replaced" in res.stderr, res.stderr
    assert conf.read_text() == "ClusterName=someone-else\n"


def test_the_node_gets_every_core_whatever_omp_num_threads_says(paths):
    """A test worker (and many a training shell) sets OMP_NUM_THREADS=1, which `nproc` honours: the node would
    have one CPU and a study's array tasks would run one at a time."""
    _, conf = paths
    res = helper("config", paths, OMP_NUM_THREADS="1", OMP_THREAD_LIMIT="1")
    assert res.returncode == 0, res.stderr
    node = next(line for line in conf.read_text().splitlines() if line.startswith("NodeName="))
    assert f" CPUs={len(os.sched_getaffinity(0))} " in node, node
