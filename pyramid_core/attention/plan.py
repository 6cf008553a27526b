"""Host-side facts about a packed batch, read once per tensor object.

A DiT call builds its ``cu_seqlens`` and ``frame_ids`` once (its token layout, once per
pyramid stage) and every layer of every step passes the same tensor objects. What a backend
needs to know on the host -- the sequence bounds for SDPA's per-sequence calls, where the
frame id changes, whether the ids are sorted so our kernels can skip the mask on whole key
ranges -- is read here: the first call for a tensor copies it to the host (one
synchronisation on CUDA), later calls with the same unmodified tensors cost a dict lookup.

Tensors are recognised by identity and version counter (weak references, so a cached entry
never keeps a tensor alive). Tensors made under ``torch.inference_mode`` have no version
counter: for them a cached result assumes they are not modified in place afterwards, which
holds for index tensors built once and only read.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch

_CACHE_SIZE = 32


def tensor_version(t: torch.Tensor) -> int:
    """``t``'s in-place modification counter (-1 for inference tensors, which have none)."""
    return -1 if t.is_inference() else t._version


class TensorMemo:
    """Results of ``compute(*tensors)`` remembered per tensor objects (and an extra key)."""

    def __init__(self, size: int = _CACHE_SIZE):
        self._size = size
        self._entries: dict[tuple, tuple[tuple, object]] = {}

    def get(self, tensors: tuple[torch.Tensor | None, ...], extra, compute: Callable[[], object]):
        key = (tuple(id(t) for t in tensors), extra)
        versions = tuple(None if t is None else tensor_version(t) for t in tensors)
        cached = self._entries.get(key)
        if cached is not None:
            refs, cached_versions, value = cached
            if cached_versions == versions and all((r() if r is not None else None) is t
                                                   for r, t in zip(refs, tensors)):
                return value
        value = compute()
        if len(self._entries) >= self._size:
            self._entries.clear()
        refs = tuple(None if t is None else weakref.ref(t) for t in tensors)
        self._entries[key] = (refs, versions, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True)
class PackPlan:
    """What the host knows about one packed batch.

    Attributes:
        bounds: ``cu_seqlens`` as ints, ``(num_seqs + 1,)``.
        frame_runs: None without frame ids; else per sequence the end offsets (relative to the
            sequence start) of its runs of equal frame ids, e.g. ``[0, 0, 1, 1, 1, 2] -> (2, 5,
            6)``, or None for a sequence whose ids ever decrease.
    """

    bounds: tuple[int, ...]
    frame_runs: tuple[tuple[int, ...] | None, ...] | None

    @property
    def frames_sorted(self) -> bool:
        """Frame ids never decrease within any sequence (the models' layout: text at frame 0,
        then the history clips and the noisy clip in time order)."""
        return self.frame_runs is not None and all(runs is not None for runs in self.frame_runs)


_plans = TensorMemo()


def _runs(ids: torch.Tensor) -> tuple[int, ...] | None:
    """End offsets of the runs of equal values in a 1-D host tensor; None if it ever decreases."""
    if ids.numel() > 1 and bool((ids[1:] < ids[:-1]).any()):
        return None
    _, counts = torch.unique_consecutive(ids, return_counts=True)
    return tuple(counts.cumsum(0).tolist())


def _build(cu_seqlens: torch.Tensor, frame_ids: torch.Tensor | None) -> PackPlan:
    bounds = tuple(cu_seqlens.tolist())
    if frame_ids is None:
        return PackPlan(bounds, None)
    ids = frame_ids.cpu()
    runs = tuple(_runs(ids[start:end]) for start, end in zip(bounds[:-1], bounds[1:]))
    return PackPlan(bounds, runs)


def pack_plan(cu_seqlens: torch.Tensor, frame_ids: torch.Tensor | None = None) -> PackPlan:
    """The :class:`PackPlan` of ``cu_seqlens`` (int32 ``(num_seqs + 1,)``) and optional
    ``frame_ids`` (int32 ``(total,)``), computed once per pair of tensor objects."""
    return _plans.get((cu_seqlens, frame_ids), None, lambda: _build(cu_seqlens, frame_ids))


def forget() -> None:
    """Drop every remembered plan (tests)."""
    _plans.clear()
