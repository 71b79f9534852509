"""How the model is spread over the processes (train.parallel): replicas (one process, or DDP) or shards (FSDP2).

Both give the training loop the same few things, so the loop never branches on the parallelism:
  - `shard(model, method)`: called after the method's surgery and before its optimizer is built (FSDP2
    must wrap the parameters the optimizer will hold); replicas leave the model as it is;
  - `wrap(model)`: the module the loop calls forward on (DDP's wrapper, or the model itself);
  - `no_sync()`: a context for the micro-batches before the last, which skips the gradient reduction;
  - `model_state` / `optimizer_state`: FULL tensors, in the one-process format (collective under FSDP2:
    every rank calls, rank 0 writes), so a checkpoint resumes at any world size and every reader works;
  - `load_model_state` / `load_optimizer_state`: the inverse, from such a full checkpoint;
  - `lockstep`: whether every rank must run the same number of forwards (FSDP2 all-gathers in each).

FSDP2 is `fully_shard` on each unit the method names (Method.fsdp_units: the decoder blocks by default)
and on the root, with a mixed-precision policy matching train.precision: bf16 compute with fp32 gradient
reduction for bf16-mixed, none otherwise (fp32, or pure bf16 where the parameters already are bf16).
Gradients are averaged over ranks by the reduce-scatter, as DDP's all-reduce does, so the loss scaling
(sum of NLL / targets of the global batch, times the world) is the same for both.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

from ..config import PARALLEL_MODES
from ..distributed import DistEnv
from ..errors import LensError
from ..sharding import full, full_state, is_sharded, local_part, set_full_

log = logging.getLogger("lowrank_lens")

class Replicated:
    """One process, or DDP under torchrun: every rank holds the whole model."""

    lockstep = False

    def __init__(self, env: DistEnv) -> None:
        self.env = env
        self.net: nn.Module | None = None

    def shard(self, model: nn.Module, method: Any) -> nn.Module:
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.env.enabled:
            # No buffer needs syncing (all are deterministic from the config); broadcasting them every forward
            # would move e.g. SLTrain's sparse supports (~450 MB at 1b) for nothing.
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None,
                broadcast_buffers=False)
        else:
            self.net = model
        return self.net

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.net.no_sync() if isinstance(self.net, nn.parallel.DistributedDataParallel) else \
            contextlib.nullcontext()

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return dict(model.state_dict())

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


class Sharded(Replicated):
    """FSDP2 under torchrun: each rank holds a dim-0 shard of every parameter, gradient and AdamW moment."""

    lockstep = True

    def shard(self, model: nn.Module, method: Any) -> nn.Module:
        # FSDP2's public modules: torch >= 2.6 and a build with torch.distributed; DDP and one-process runs
        # do not need them, so they are imported only when a run shards.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.env.device.type, (self.env.world,))
        precision = method.run.train.precision
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if precision == "bf16-mixed" else MixedPrecisionPolicy()
        units = method.fsdp_units(model)
        for unit in units:
            fully_shard(unit, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        if self.env.is_main:
            log.info(f"FSDP2: {len(units)} units + root sharded over {self.env.world} processes ({precision})")
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        self.net = model  # fully_shard changed the model in place
        return model

    @contextlib.contextmanager
    def no_sync(self):
        self.net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.net.set_requires_gradient_sync(True)

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in full_state(dict(model.state_dict())).items()}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        sd = optimizer.state_dict()
        return {**sd, "state": {i: {k: full(v).cpu() if is_sharded(v) else v for k, v in s.items()}
                                for i, s in sd["state"].items()}}

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise LensError(f"the checkpoint does not fit this model (missing {missing[:2]}, unexpected "
                            f"{unexpected[:2]})")
        for k, v in own.items():
            set_full_(v, state[k])

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Shard each saved full moment like its parameter, except the state an optimizer keeps replicated
        (`replicated_state(group)`, e.g. GaLore's projected moments, whose shape is not the parameter's)."""
        params = [(p, g) for g in optimizer.param_groups for p in g["params"]]
        replicated = getattr(optimizer, "replicated_state", lambda group: False)
        out = {}
        for i, s in state["state"].items():
            p, group = params[int(i)]
            out[i] = {k: _shard_like(v, p) if is_sharded(p) and not replicated(group) and torch.is_tensor(v)
                      and tuple(v.shape) == tuple(p.shape) and v.dim() > 0 else v for k, v in s.items()}
        optimizer.load_state_dict({**state, "state": out})


def _shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local_part(whole.to(like.dtype), like), like.device_mesh, like.placements,
                              shape=like.shape, stride=like.stride())


def make_parallel(mode: str, env: DistEnv) -> Replicated:
    """The strategy for train.parallel on this world: one process is never sharded."""
    if mode not in PARALLEL_MODES:
        raise LensError(f"train.parallel {mode!r} is not one of {', '.join(PARALLEL_MODES)}")
    return Sharded(env) if mode == "fsdp" and env.enabled else Replicated(env)
