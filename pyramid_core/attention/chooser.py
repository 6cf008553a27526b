"""``auto`` on a GPU: the fastest backend for each kind of call, timed once per machine.

No backend wins everywhere. Measured on one H200 (issue 26): our Triton kernels took the
384p frame-causal forward in 0.71 ms against masked SDPA's 1.76, but at 768p (30,800
tokens) SDPA's flash kernels took 9.5 ms against our 12.6. So the first time a process meets
a *kind* of call (:class:`CallKind`: dtype, head widths and counts, mask, a power-of-two
bucket of the sequence length and count, forward or training), every backend that can serve
it is run on that very call a few times and the fastest is kept, in memory and on disk
(:mod:`.disk_cache`, keyed by GPU, torch, Triton and our kernel source). Later calls of that
kind, in this process or the next, go straight to the winner.

Candidates: "triton" (when its self-check passes), "sdpa" (block-causal calls into PyTorch's
flash / cuDNN / memory-efficient kernels), "flex" (``flex_attention`` with a block mask) and
"flash_attn" when installed and the call has no frame mask. SageAttention is never chosen by ``auto``: it quantises, so it changes results.
All candidates compute the same attention, so the choice moves results only by rounding.

The timing runs the candidates on the caller's own tensors (their outputs are discarded but
the winner's), outside CUDA-graph capture only; a capture, a CPU call or a single candidate
falls back to :func:`static_choice`.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from . import disk_cache

log = logging.getLogger("pyramid_core.attention")
SECTION = "fastest"
WARMUP = 1          # untimed calls first: Triton compiles and autotunes, cuDNN plans
REPEATS = 3         # timed calls per candidate; the median is kept


def _bucket(n: int, low: int = 1, high: int = 1 << 20) -> int:
    """The power of two at or above ``n``, clamped to ``[low, high]``."""
    return min(max(1 << max(0, math.ceil(math.log2(max(n, 1)))), low), high)


@dataclass(frozen=True)
class CallKind:
    """What decides which backend is fastest, read from tensor metadata only (no sync)."""

    dtype: str
    head_dim: int
    heads: int
    kv_heads: int
    masked: bool
    seq_len: int            # power-of-two bucket of the mean sequence length
    sequences: int          # power-of-two bucket of the number of sequences
    training: bool          # a backward will follow: time forward + backward

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, frame_ids, training: bool):
        sequences = max(1, cu_seqlens.numel() - 1)
        return cls(str(q.dtype).removeprefix("torch."), q.shape[-1], q.shape[1], k.shape[1], frame_ids is not None,
                   _bucket(q.shape[0] // sequences, 64), _bucket(sequences, 1, 256), training)

    def label(self) -> str:
        mask = "frame-mask" if self.masked else "no-mask"
        return (f"{self.dtype} d{self.head_dim} h{self.heads}/{self.kv_heads} {mask} len<={self.seq_len} "
                f"seqs<={self.sequences} {'train' if self.training else 'infer'}")


def cuda_seconds(run: Callable[[], object], device: torch.device) -> float:
    """Median seconds of ``run()`` on ``device``'s current stream, after :data:`WARMUP` calls."""
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


class Chooser:
    """Measured choices per (machine, :class:`CallKind`), backed by a :class:`~.disk_cache.DiskCache`.

    Args:
        cache: where choices persist (the process-wide one by default).
        measure: ``measure(run) -> seconds`` (CUDA events by default; tests inject timings).
    """

    def __init__(self, cache: disk_cache.DiskCache | None = None, measure=None):
        self.cache = cache if cache is not None else disk_cache.shared
        self.measure = measure
        self.timed = 0              # how many choices this process measured (tests, reports)

    def known(self, machine: str, kind: CallKind) -> str | None:
        """The remembered winner for ``kind``, or None."""
        entry = self.cache.get(machine, SECTION, kind.label())
        return entry.get("backend") if isinstance(entry, dict) else None

    def choose(self, machine: str, kind: CallKind, candidates: dict[str, Callable[[], object]],
               device: torch.device) -> str:
        """The fastest of ``candidates`` (name -> a call to time) for ``kind``; measured the
        first time, remembered after. A candidate that raises is left out (and logged)."""
        known = self.known(machine, kind)
        if known in candidates:
            return known
        seconds = {}
        for name, run in candidates.items():
            try:
                seconds[name] = self.measure(run) if self.measure else cuda_seconds(run, device)
            except Exception as err:  # noqa: BLE001 -- a candidate that fails here is not a choice
                log.warning("pyramid_core attention: backend %r failed while being timed for %s (%s: %s); "
                            "it is not used for such calls", name, kind.label(), type(err).__name__, err)
        if not seconds:
            raise RuntimeError(f"no attention backend could run a call of kind {kind.label()}")
        best = min(seconds, key=seconds.get)
        self.timed += 1
        self.cache.put(machine, SECTION, kind.label(),
                       {"backend": best, "ms": {name: round(s * 1e3, 4) for name, s in seconds.items()}})
        log.info("pyramid_core attention: %s -> %s (%s)", kind.label(), best,
                 ", ".join(f"{n} {s * 1e3:.3g} ms" for n, s in sorted(seconds.items(), key=lambda x: x[1])))
        return best


shared = Chooser()
