"""Distributed plumbing at the edge of the trainers: torchrun init, DDP/FSDP wrapping, reductions.

Launch with ``torchrun --nproc_per_node N python -m pyramid_core train-vae ...``: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` come from the environment
(``env://``). Without them everything runs as one process and the helpers are no-ops. The
backend is NCCL on CUDA and gloo on the CPU.

Trainers call the model through the wrapper and read or write weights through
:func:`model_state_dict` / :func:`load_model_state_dict`, which gather full tensors under
FSDP, so checkpoints look the same however the run was sharded.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("pyramid_core.training")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by the torchrun environment (or run alone).

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available). Each rank uses
            ``cuda:LOCAL_RANK``.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} unset: launch with torchrun")
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


# How long the main thread lets go of the GIL before the interpreter may shut down; see cleanup().
WORKER_DRAIN_SECONDS = 0.2


def cleanup() -> None:
    """Leave the process group at the end of a run: every rank first finishes every collective.

    Then the main thread lets go of the GIL for a moment. A gloo worker thread frees a finished
    collective's tensors after the collective has completed, and freeing a tensor that Python
    once held takes the GIL. If the interpreter is already shutting down by then, CPython ends
    that thread, C++ calls ``std::terminate`` and the rank dies with SIGABRT ("terminate called
    without an active exception") after a successful run: seen about once in 40 two-rank FSDP
    runs, with a core dump showing exactly that stack. ``destroy_process_group`` does not stop
    gloo's worker threads, so it cannot prevent it.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        time.sleep(WORKER_DRAIN_SECONDS)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


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
