"""Refuse, before anything is allocated, a run or a checkpoint that cannot fit the memory it would use.

The estimate is a lower bound: the method's closed-form footprint (parameters, gradients and optimizer
state: `Method.footprint`, the formulas docs/memory.md checks against measured tensors) plus the smallest
activations one micro-batch can keep for backward (per token and layer the attention's q, k, v and output
and the MLP's gate, up and product: 4h + 3i values; the logits and their fp32 copy for the loss). Transient
buffers, the attention matrix and allocator overhead are left out, so a refused run could never have fit;
one that passes may still run out of memory at its peak.

Memory available: on CUDA the device's free memory; on the CPU the host's MemAvailable, capped by the
cgroup limit of a container. Processes of one torchrun on one host share its RAM, so on the CPU the
estimate is multiplied by LOCAL_WORLD_SIZE. LOWRANK_LENS_NO_MEMORY_CHECK=1 skips the check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import LensError

GIB = 2**30
SKIP_ENV = "LOWRANK_LENS_NO_MEMORY_CHECK"


def _gib(n: float) -> str:
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
        return free, f"{device} has {_gib(free)} free of {_gib(total)}"
    room = host_available()
    return room, f"this machine has {_gib(room or 0)} available"


@dataclass(frozen=True)
class Need:
    parts: dict[str, int]
    """Bytes per part: parameters, gradients, optimizer state, activations (one micro-batch)."""
    largest: str
    """The fields behind the largest term, as the user sets them (for the message)."""

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def estimate(cfg: RunConfig, shards: int = 1) -> Need:
    """Lower bound of the bytes one process holds at its peak (`shards`: FSDP2 ranks sharing the state)."""
    from ..methods import get_method
    from ..methods.shapes import param_bytes

    m, t = cfg.model, cfg.train
    fp = get_method(cfg.method).footprint(cfg)
    size = param_bytes(cfg)
    act = 4 if t.precision == "fp32" else 2
    tokens = t.micro_batch_size * cfg.data.seq_len
    h, i, v, layers = m.hidden_size, m.intermediate_size, m.vocab_size, m.num_layers
    parts = {"parameters": ((sum(fp.trainable) + sum(fp.frozen)) * size + fp.buffer_bytes) // shards,
             "gradients": sum(fp.trainable) * size // shards,
             "optimizer state": fp.state_bytes // shards,
             "activations of one micro-batch": tokens * (layers * (4 * h + 3 * i) * act + v * (act + 4))}
    per_weight = 2 * size + fp.state_bytes / max(1, sum(fp.trainable))  # weight, gradient, state (per element)
    terms = {f"model.vocab_size {v} x model.hidden_size {h} (embedding and LM head)": 2 * v * h * per_weight,
             f"model.num_layers {layers} x model.hidden_size {h} / model.intermediate_size {i} (the layers)":
                 layers * (4 * h * h + 3 * h * i) * per_weight,
             f"train.micro_batch_size {t.micro_batch_size} x data.seq_len {cfg.data.seq_len} (activations)":
                 tokens * layers * (4 * h + 3 * i) * act,
             f"train.micro_batch_size x data.seq_len x model.vocab_size {v} (logits)": tokens * v * (act + 4)}
    return Need(parts, max(terms, key=terms.__getitem__))


def check_fits(cfg: RunConfig, device: torch.device, world: int = 1) -> None:
    """One LensError, naming the fields, the estimate and the memory available, when the run cannot fit."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    need = estimate(cfg, shards=world if cfg.train.parallel == "fsdp" else 1)
    room, where = device_available(device)
    per_host = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    if room is None or need.total * per_host <= room:
        return
    parts = ", ".join(f"{k} {_gib(b)}" for k, b in need.parts.items())
    procs = f" for each of {per_host} processes" if per_host > 1 else ""
    raise LensError(f"this run needs at least {_gib(need.total)} on {device}{procs} ({parts}), but {where}; the "
                    f"largest part is {need.largest}: make it smaller (or set {SKIP_ENV}=1 to try anyway)")


def check_loadable(params: int, what: str, bytes_per: int = 4, copies: int = 2) -> None:
    """Refuse to load a model of `params` elements that cannot fit this machine's memory (`copies`: the
    model and the state dict it is read from)."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    room = host_available()
    need = params * bytes_per * copies
    if room is not None and need > room:
        raise LensError(f"{what} describes a model of {params / 1e9:.3g}B parameters, which needs at least "
                        f"{_gib(need)} to load, but this machine has {_gib(room)} available; is it the right "
                        f"config? (set {SKIP_ENV}=1 to try anyway)")
