"""Folders built beside their destination and swapped in whole, so a killed command leaves nothing that
reads as a result.

A command that writes a folder (an import's run folder, a report) builds it in a hidden temporary folder
`.tmp-<name>-XXXX` next to the destination and renames it into place at the end. The temporary folder holds
an owner record (host, pid and the process's start time), so the next command over the same parent can
tell a temporary of a process that died (SIGKILL, a power cut) from one still being written, and remove
only the former (`sweep_stale`). Every reader of a folder of runs skips hidden names (`is_hidden`).

Replacing an existing folder (`replace_dir`) renames the old one to `.old-<name>-<pid>` first and removes it
after the new one is in place; a kill between the two renames leaves the old folder under that name, which
`sweep_stale` puts back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
OWNER_FILE = ".owner.json"


def is_hidden(path: Path) -> bool:
    """A name readers skip: hidden folders, among them the temporaries of this module."""
    return path.name.startswith(".")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart; '' elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process (a shared file system): never ours to judge
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = owner.get("started", "")
    return not started or _start_time(pid) in ("", started)


def make_temp_dir(parent: Path, name: str) -> Path:
    """A new `.tmp-<name>-XXXX` folder in `parent` with this process's owner record."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name}-", dir=parent))
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}
    (tmp / OWNER_FILE).write_text(json.dumps(record))
    return tmp


def finish_temp_dir(tmp: Path) -> None:
    """Drop the owner record of a temporary about to become the real folder."""
    (tmp / OWNER_FILE).unlink(missing_ok=True)


def _owner(folder: Path) -> dict | None:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def sweep_stale(parent: Path) -> list[str]:
    """Remove the temporaries in `parent` whose owner process is gone, and put back an old folder a killed
    replace_dir left renamed; returns what was done, one phrase each."""
    done: list[str] = []
    if not parent.is_dir():
        return done
    for p in sorted(parent.iterdir()):
        if not p.is_dir() or p.is_symlink():
            continue
        if p.name.startswith(TEMP_PREFIX):
            owner = _owner(p)
            if owner is not None and not _alive(owner):
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}, left by a process that was stopped (pid {owner.get('pid')})")
        elif p.name.startswith(OLD_PREFIX):
            pid = p.name.rpartition("-")[2]
            if pid.isdigit() and _alive({"host": socket.gethostname(), "pid": int(pid)}):
                continue
            dest = parent / p.name[len(OLD_PREFIX):].rpartition("-")[0]
            if dest.exists():
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}, the folder a finished rebuild replaced")
            else:
                p.rename(dest)
                done.append(f"restored {dest.name}, which a stopped rebuild had moved aside")
    return done


def replace_dir(new: Path, dest: Path) -> None:
    """Put the finished folder `new` at `dest`, replacing the folder there (if any) as a whole."""
    finish_temp_dir(new)
    old = None
    if dest.exists():
        old = dest.with_name(f"{OLD_PREFIX}{dest.name}-{os.getpid()}")
        os.rename(dest, old)
    os.rename(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
