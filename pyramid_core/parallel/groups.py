"""How the ranks of a ``torchrun`` launch share the work of generating videos.

Ranks form *video groups* of ``cfg_size x sequence_size`` consecutive ranks (so a group sits
on one node when it can, where the all-to-all traffic of sequence parallelism is cheapest).
Each group makes one video at a time; with several groups, ``generate-batch`` gives each its
own share of the jobs.

Inside a group:

* ``cfg`` (2 ranks): the classifier-free-guidance batch ``[negative, positive]`` is split, the
  negative half on the first rank, the positive half on the second
  (:class:`~pyramid_core.parallel.batch_split.BatchSplitDiT`).
* ``sequence`` (N ranks): each DiT call's image tokens are split over the ranks and the
  attention heads are exchanged around attention (DeepSpeed-Ulysses;
  :mod:`pyramid_core.parallel.sequence`).
* ``cfg+sequence`` (2 x N ranks): both; the N ranks of each CFG half run sequence parallel.

Rank ``r`` of the launch is rank ``r % G`` of group ``r // G`` (``G`` the group size); within
a group, CFG half ``c`` and sequence rank ``s`` sit at ``c * N + s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..distributed import DistInfo

PARALLEL_MODES = ("none", "cfg", "sequence", "cfg+sequence")


@dataclass(frozen=True)
class ParallelPlan:
    """Ranks per video: ``cfg_size`` (1 or 2) x ``sequence_size`` (>= 1)."""

    mode: str = "none"
    cfg_size: int = 1
    sequence_size: int = 1

    @property
    def group_size(self) -> int:
        return self.cfg_size * self.sequence_size


def _launch_hint(ranks: int, command: str) -> str:
    return f"torchrun --nproc_per_node {ranks} -m pyramid_core {command} ..."


def plan_parallel(mode: str, world_size: int, sequence_size: Optional[int] = None, *,
                  one_video: bool, command: str = "generate") -> ParallelPlan:
    """Check ``--parallel`` and ``--sequence-size`` against the launch; ``ValueError`` saying
    what to launch instead.

    Args:
        mode: one of :data:`PARALLEL_MODES`.
        world_size: processes in the launch (1 without torchrun).
        sequence_size: ranks per video for sequence parallelism; default: every rank of the
            launch (half of them with ``cfg+sequence``).
        one_video: the command makes one video (``generate``), so every rank must be in the
            one group; ``generate-batch`` may run several groups side by side.
        command: the sub-command, for the launch hint.
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"--parallel {mode}: choose one of {', '.join(PARALLEL_MODES)}")
    if sequence_size is not None and "sequence" not in mode:
        raise ValueError(f"--sequence-size needs --parallel sequence or cfg+sequence, not {mode}")
    if mode == "none":
        if one_video and world_size > 1:
            raise ValueError(f"generate makes one video but {world_size} processes were launched: add --parallel "
                             "cfg (2 processes), sequence or cfg+sequence, or use generate-batch to give each "
                             "process its own videos")
        return ParallelPlan()
    cfg = 2 if "cfg" in mode else 1
    if "sequence" in mode:
        sequence = sequence_size if sequence_size is not None else world_size // cfg
        if sequence < 2:
            need = 2 * cfg
            raise ValueError(f"--parallel {mode} needs at least {need} processes ({cfg} x 2 or more), this launch "
                             f"has {world_size}; launch `{_launch_hint(need, command)} --parallel {mode}`")
    else:
        sequence = 1
    plan = ParallelPlan(mode, cfg, sequence)
    size = plan.group_size
    if world_size == 1:
        raise ValueError(f"--parallel {mode} splits one video over {size} processes, but this is one process: "
                         f"launch `{_launch_hint(size, command)} --parallel {mode}`")
    if one_video and world_size != size:
        raise ValueError(f"--parallel {mode} runs one video on {size} processes, this launch has {world_size}: "
                         f"launch `{_launch_hint(size, command)}`, or use generate-batch for several videos")
    if world_size % size:
        raise ValueError(f"--parallel {mode} makes groups of {size} processes, which {world_size} processes do "
                         f"not divide into; launch a multiple of {size}")
    return plan


@dataclass(frozen=True)
class ParallelGroups:
    """This rank's place in the plan, with the process groups it talks over.

    ``worker`` numbers the video groups (``num_workers`` of them); ``leader`` is the group's
    first rank, the one that writes the group's outputs. ``group`` spans the whole video
    group, ``cfg_group`` the 2 ranks that share one position in the sequence split,
    ``sequence_group`` the N ranks of one CFG half (each None when of size 1).
    """

    plan: ParallelPlan
    info: DistInfo
    worker: int = 0
    num_workers: int = 1
    group: Optional[object] = None
    cfg_group: Optional[object] = None
    sequence_group: Optional[object] = None

    @property
    def group_rank(self) -> int:
        return self.info.rank % self.plan.group_size

    @property
    def leader(self) -> bool:
        return self.group_rank == 0

    @property
    def leader_rank(self) -> int:
        """Global rank of this group's leader."""
        return self.worker * self.plan.group_size


def make_groups(plan: ParallelPlan, info: DistInfo) -> ParallelGroups:
    """Create the process groups of ``plan`` (collective: every rank calls it, in the same order)."""
    size, n = plan.group_size, plan.sequence_size
    if not info.distributed:
        return ParallelGroups(plan, info)
    if info.world_size % size:
        raise ValueError(f"{info.world_size} processes do not split into groups of {size}")
    mine: dict[str, object] = {}
    for worker in range(info.world_size // size):
        base = worker * size
        # dist.new_group is collective over the whole launch: every rank creates every group.
        candidates = [("group", list(range(base, base + size)))]
        candidates += [("sequence_group", [base + c * n + s for s in range(n)]) for c in range(plan.cfg_size)]
        candidates += [("cfg_group", [base + c * n + s for c in range(plan.cfg_size)]) for s in range(n)]
        for name, ranks in candidates:
            if len(ranks) < 2:
                continue
            handle = dist.new_group(ranks)
            if info.rank in ranks:
                mine[name] = handle
    return ParallelGroups(plan, info, worker=info.rank // size, num_workers=info.world_size // size, **mine)


def broadcast_from_leader(tensor: torch.Tensor, groups: ParallelGroups) -> torch.Tensor:
    """``tensor`` as the group's leader has it, on every rank of the group (in place; returned).

    Used for latents computed on every rank (an encoded image or clip), so the ranks of one
    video start from bit-identical state whatever their devices' rounding.
    """
    if groups.group is None:
        return tensor
    tensor = tensor.contiguous()
    dist.broadcast(tensor, src=groups.leader_rank, group=groups.group)
    return tensor
