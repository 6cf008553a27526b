"""Where this process sits in a ``torchrun`` launch, for generation and training alike.

Launch with ``torchrun --nproc_per_node N [--nnodes M ...] -m pyramid_core <command> ...``:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` come from the
environment (``env://``). Without them everything runs as one process and the helpers are
no-ops. The backend is NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


def launch_world_size() -> int:
    """Processes in this launch, from torchrun's environment (1 without torchrun); no process
    group is needed to ask, so arguments can be checked before joining one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_rank() -> int:
    """This process's rank in the launch, from torchrun's environment (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


# How long a rank other than 0 waits, after a user error, for rank 0 to end the launch.
LAUNCH_ERROR_GRACE_S = 60.0


def report_launch_error(message: str, grace_s: float = LAUNCH_ERROR_GRACE_S) -> None:
    """Print a user-facing error once per torchrun launch, on stderr.

    Every rank checks the same arguments and files, so every rank usually meets the same
    problem. Rank 0 prints it at once. The other ranks wait up to ``grace_s`` seconds before
    printing and returning: torchrun stops the whole launch as soon as one rank exits with an
    error, so a rank that returned first could have rank 0 stopped before it said anything
    (seen on CI: the launch failed with no message at all). A problem only this rank met
    (a file missing on one node) is still reported, with the rank, once the wait is over.
    Without torchrun it prints at once.
    """
    rank = launch_rank()
    if rank != 0 and launch_world_size() > 1:
        time.sleep(grace_s)                # normally ended here by torchrun's SIGTERM
        message = f"[rank {rank}] {message}"
    print(message, file=sys.stderr, flush=True)


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
    rank, world_size = launch_rank(), launch_world_size()
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
