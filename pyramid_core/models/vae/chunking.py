"""Temporal chunking: run a causal network over a long video a few frames at a time.

The first chunk holds the image frame plus ``chunk_size`` frames, every later chunk
``chunk_size`` frames (the last may be shorter). A :class:`CausalCache` carries each
causal conv's context across chunks, so the result equals one pass over the whole video
while activation memory grows with the chunk, not with the video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .causal_conv3d import CausalCache


def temporal_chunks(num_frames: int, chunk_size: int) -> list[slice]:
    """Frame slices: [0, 1 + chunk_size), then steps of ``chunk_size`` up to ``num_frames``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    first = min(num_frames, 1 + chunk_size)
    return [slice(0, first)] + [slice(s, min(s + chunk_size, num_frames)) for s in range(first, num_frames, chunk_size)]


def run_chunked(
    network: Callable[[torch.Tensor, CausalCache], torch.Tensor], x: torch.Tensor, chunk_size: int,
    after_chunk: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Apply ``network(chunk, cache)`` to consecutive chunks of x (B, C, T, H, W) along T, concatenated.

    ``after_chunk`` is called after every chunk (progress; raising in it stops the work there).
    """
    cache = CausalCache()
    outputs = []
    for frames in temporal_chunks(x.shape[2], chunk_size):
        outputs.append(network(x[:, :, frames], cache))
        cache.first_chunk = False
        if after_chunk is not None:
            after_chunk()
    return torch.cat(outputs, dim=2)
