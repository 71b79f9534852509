"""The memory this process can still get: the host's (MemAvailable, capped by a container's cgroup limit) and a
CUDA device's free memory; and the check that a model read from elsewhere fits before it is loaded (imports).
A run's own estimate and check (train/fits.py) read these too."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import LensError

GIB = 2**30
SKIP_ENV = "LOWRANK_LENS_NO_MEMORY_CHECK"


def gib(n: float) -> str:
    if n >= 100 * GIB:
        return f"{n / GIB:,.0f} GiB"
    return f"{n / GIB:.3g} GiB" if n >= GIB / 10 else f"{n / 2**20:.3g} MiB"


def _cgroup_room() -> int | None:
    """What the container's memory limit leaves (cgroup v2, then v1), or None without a limit."""
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap, now = Path(limit).read_text().strip(), Path(used).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and now.isdigit() and int(cap) < 2**60:
            return max(0, int(cap) - int(now))
    return None


def host_available() -> int | None:
    """Bytes this process can still get from the host: MemAvailable, capped by a cgroup limit (None: unknown)."""
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    cap = _cgroup_room()
    return cap if room is None else room if cap is None else min(room, cap)


def device_available(device: torch.device) -> tuple[int | None, str]:
    """(bytes free, how to name where) for the device a run trains on."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"{device} has {gib(free)} free of {gib(total)}"
    room = host_available()
    return room, f"this machine has {gib(room or 0)} available"


def check_loadable(params: int, what: str, bytes_per: int = 4, copies: int = 2) -> None:
    """Refuse to load a model of `params` elements that cannot fit this machine's memory (`copies`: the
    model and the state dict it is read from)."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    room = host_available()
    need = params * bytes_per * copies
    if room is not None and need > room:
        raise LensError(f"{what} describes a model of {params / 1e9:.3g}B parameters, which needs at least "
                        f"{gib(need)} to load, but this machine has {gib(room)} available; is it the right "
                        f"config? (set {SKIP_ENV}=1 to try anyway)")
