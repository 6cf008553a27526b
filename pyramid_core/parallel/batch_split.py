"""CFG parallelism: the rows of each DiT call split over ranks, the predictions exchanged.

With guidance on, the sampler calls the DiT on the batch ``[negative, positive]`` (see
:mod:`pyramid_core.sampling.guidance`). :class:`BatchSplitDiT` runs rows
``[r * B / n, (r + 1) * B / n)`` of every call on rank ``r`` of its group of ``n`` ranks and
all-gathers the predictions, so every rank holds the whole batch's prediction and goes on
exactly as one process would. With 2 ranks that puts the negative prompt on one and the
positive prompt on the other. Rows of a batch never interact inside the DiT, so the split
changes nothing but the matmul shapes (results equal within float rounding). A call whose
batch does not divide (guidance off: one row) runs whole on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..models.dit_tokens import normalize_sample


def all_gather_rows(tensor: torch.Tensor, group) -> torch.Tensor:
    """Concatenate every rank's ``(b, ...)`` along dim 0, in rank order: ``(n * b, ...)``."""
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return torch.cat(parts)


class BatchSplitDiT(nn.Module):
    """A pyramid DiT whose calls are split by batch rows over the ranks of ``group``.

    Takes and returns what the wrapped DiT does (``sample`` entries of clips ``(B, C, T, H, W)``,
    text rows ``b * S + s``); parameters are the wrapped model's (``.dit``).
    """

    def __init__(self, dit: nn.Module, group):
        super().__init__()
        self.dit = dit
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    @property
    def config(self):
        return self.dit.config

    def forward(self, sample, encoder_hidden_states, encoder_attention_mask=None, pooled_projections=None,
                timestep_ratio=None):
        entries = normalize_sample(sample)
        batch, num_entries = entries[0][-1].shape[0], len(entries)
        if batch % self.size:
            return self.dit(sample=entries, encoder_hidden_states=encoder_hidden_states,
                            encoder_attention_mask=encoder_attention_mask, pooled_projections=pooled_projections,
                            timestep_ratio=timestep_ratio)
        part = batch // self.size
        rows = slice(self.rank * part, (self.rank + 1) * part)                     # latent rows b
        text_rows = slice(rows.start * num_entries, rows.stop * num_entries)      # text rows b * S + s

        def take(tensor, which):
            return None if tensor is None else tensor[which]

        outputs = self.dit(sample=[[clip[rows] for clip in clips] for clips in entries],
                           encoder_hidden_states=encoder_hidden_states[text_rows],
                           encoder_attention_mask=take(encoder_attention_mask, text_rows),
                           pooled_projections=take(pooled_projections, text_rows),
                           timestep_ratio=take(timestep_ratio, text_rows))
        return [all_gather_rows(out, self.group) for out in outputs]
