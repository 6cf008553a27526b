"""One video or many over the ranks of a ``torchrun`` launch (see :mod:`.groups` for the layout).

:func:`parallelize` returns the DiT a sampler should call on this rank: the model itself, with
sequence parallelism switched on over the rank's sequence group, wrapped in a
:class:`BatchSplitDiT` over its CFG group. Every rank of a video group then runs the same
sampler on the same inputs and ends with the same latents.
"""

from __future__ import annotations

from torch import nn

from .batch_split import BatchSplitDiT
from .groups import PARALLEL_MODES, ParallelGroups, ParallelPlan, broadcast_from_leader, make_groups, plan_parallel
from .sequence import check_heads, enable_sequence_parallel

__all__ = [
    "PARALLEL_MODES",
    "BatchSplitDiT",
    "ParallelGroups",
    "ParallelPlan",
    "broadcast_from_leader",
    "check_heads",
    "make_groups",
    "parallelize",
    "plan_parallel",
]


def parallelize(dit: nn.Module, groups: ParallelGroups) -> nn.Module:
    """The DiT to sample with on this rank under ``groups`` (``dit`` itself when alone).

    ``ValueError`` when the sequence group's size does not divide the DiT's heads.
    """
    if groups.sequence_group is not None:
        enable_sequence_parallel(dit, groups.sequence_group)
    if groups.cfg_group is not None:
        return BatchSplitDiT(dit, groups.cfg_group)
    return dit
