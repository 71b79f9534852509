"""Memory accounting measured from the actual tensors (not estimated): parameters, gradients, optimizer state."""

from __future__ import annotations

import torch


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
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
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
        "grad_bytes": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer_state_bytes": sum(_tensor_bytes(s) for s in optimizer.state.values()),
    }
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return out
