"""Distributed plumbing at the edge of the trainers: torchrun init, DDP/FSDP wrapping, reductions.

Launch with ``torchrun --nproc_per_node N -m pyramid_core train-vae ...``; joining the process
group (:func:`init_distributed`) and leaving it (:func:`cleanup`) live in
:mod:`pyramid_core.distributed`, shared with generation, and are re-exported here.

Trainers call the model through the wrapper and read or write weights through
:func:`model_state_dict` / :func:`load_model_state_dict`, which gather full tensors under
FSDP, so checkpoints look the same however the run was sharded.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import DistInfo, barrier, cleanup, init_distributed  # noqa: F401 (re-exported)

log = logging.getLogger("pyramid_core.training")


def setup_logging(info: DistInfo, level: int = logging.INFO) -> None:
    """Rank 0 logs at ``level``; other ranks only warnings, each line tagged with its rank."""
    logger = logging.getLogger("pyramid_core.training")
    logger.setLevel(level if info.is_main else logging.WARNING)
    if not any(getattr(h, "_pyramid_rank", None) is not None for h in logger.handlers):
        handler = logging.StreamHandler()
        handler._pyramid_rank = info.rank
        handler.setFormatter(logging.Formatter(f"[rank {info.rank}] %(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean of each scalar over ranks (identity when alone)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return {k: v / info.world_size for k, v in zip(keys, t.tolist())}


def all_reduce_sum(value: float, info: DistInfo) -> float:
    if not info.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item())


# --------------------------------------------------------------------------------------
# wrapping
# --------------------------------------------------------------------------------------

def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """DDP or FSDP (``fully_shard``, per child module and the root) when distributed; else ``model``."""
    if not info.distributed:
        return model
    if strategy == "ddp":
        ids = [info.local_rank] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for child in model.children():
            if any(p.requires_grad for p in child.parameters()):
                fully_shard(child, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown strategy {strategy!r}: use 'ddp' or 'fsdp'")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU state dict (collective under FSDP: every rank must call it)."""
    model = unwrap(model)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model = unwrap(model)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state)


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state with full tensors (collective under FSDP)."""
    model = unwrap(model)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    model = unwrap(model)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
