"""What ran: source revision, package versions, device, command — saved with every run."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

_PACKAGES = ("lowrank-lens", "torch", "transformers", "datasets", "tokenizers", "safetensors", "numpy")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(world: int, device: torch.device) -> dict:
    src = Path(__file__).resolve().parents[1]
    sha = _git(["rev-parse", "HEAD"], src)
    dirty = None if sha is None else bool(_git(["status", "--porcelain", "--untracked-files=no"], src))
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "versions": versions,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "world_size": world,
        "hostname": socket.gethostname(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
