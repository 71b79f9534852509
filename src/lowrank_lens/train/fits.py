"""Refuse, before anything is allocated, a run or a checkpoint that cannot fit the memory it would use.

The estimate is a lower bound: the method's closed-form footprint (parameters, gradients and optimizer
state: `Method.footprint`, the formulas docs/memory.md checks against measured tensors) plus the smallest
activations one micro-batch can keep for backward (per token and layer the attention's q, k, v and output
and the MLP's gate, up and product: 4h + 3i values; the logits and their fp32 copy for the loss). Transient
buffers, the attention matrix and allocator overhead are left out, so a refused run could never have fit;
one that passes may still run out of memory at its peak.

Memory available (machine.py): on CUDA the device's free memory; on the CPU the host's MemAvailable, capped by the
cgroup limit of a container. Processes of one torchrun on one host share its RAM, so on the CPU the
estimate is multiplied by LOCAL_WORLD_SIZE. LOWRANK_LENS_NO_MEMORY_CHECK=1 skips the check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..errors import LensError
from ..machine import SKIP_ENV, device_available, gib
from ..methods import get_method
from ..methods.shapes import param_bytes


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
    parts = ", ".join(f"{k} {gib(b)}" for k, b in need.parts.items())
    procs = f" for each of {per_host} processes" if per_host > 1 else ""
    raise LensError(f"this run needs at least {gib(need.total)} on {device}{procs} ({parts}), but {where}; the "
                    f"largest part is {need.largest}: make it smaller (or set {SKIP_ENV}=1 to try anyway)")
