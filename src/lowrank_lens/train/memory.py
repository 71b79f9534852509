"""Memory accounting measured from the actual tensors (not estimated): parameters, gradients, optimizer state.

Per rank: under FSDP2 (train.parallel=fsdp) a sharded tensor counts the part this rank stores, so the
numbers are what one process holds; `params_total` / `params_trainable` stay the model's global counts.
"""

from __future__ import annotations

import torch

from ..sharding import local, local_numel


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return local_numel(obj) * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def measure_memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> dict:
    """Bytes held right after an optimizer step, before gradients are freed."""
    params = list(model.parameters())
    out = {
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        "param_bytes": sum(local_numel(p) * p.element_size() for p in params),
        "buffer_bytes": sum(local_numel(b) * b.element_size() for b in model.buffers()),
        "grad_bytes": sum(local(p.grad).numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer_state_bytes": sum(_tensor_bytes(s) for s in optimizer.state.values()),
    }
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return out
