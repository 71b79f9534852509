"""One process or many under torchrun: rank bookkeeping, device choice and the few collectives we need."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import LensError


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process group was started by init_distributed (and is ended by shutdown)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """All-reduce a small float64 vector (a no-op on one process)."""
        t = torch.as_tensor(values, dtype=torch.float64)
        if self.enabled:
            # gloo reduces on CPU; nccl needs the tensor on the GPU.
            t = t.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
        return t.cpu()


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LensError(f"train.device {pref!r} asked for CUDA but none is available; use --device cpu")
        return torch.device(pref if ":" in pref else f"cuda:{local_rank}")
    if pref == "cpu":
        return torch.device("cpu")
    raise LensError(f"train.device {pref!r} is not one of auto, cpu, cuda, cuda:N")


def init_distributed(device_pref: str) -> DistEnv:
    """Read torchrun's environment; start a process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():  # a caller's own group (e.g. several runs in one job) is used
        owns = True
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=device, owns_group=owns)


def shutdown(env: DistEnv) -> None:
    """End the process group if init_distributed started it; a caller's own group stays for its next use."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
