"""The ``"flex"`` backend: PyTorch's ``flex_attention`` with a block mask of the packed batch.

One call covers every sequence: the mask allows token pairs of the same sequence whose key
frame is at most the query frame (or all pairs of a sequence without frame ids), and
``flex_attention`` skips the blocks it rules out entirely. On CUDA it runs compiled (Triton
templates, forward and backward); elsewhere eagerly (PyTorch's reference path: correct,
slow, forward only, for tests). On one H200 (issue 26) it was the fastest forward+backward
at the 768p shape, 40.8 ms against our kernels' 41.2 and SDPA's 45.2, and slower
forward-only, which is why ``auto`` times it with the others instead of preferring it.

The block mask is built once per ``(cu_seqlens, frame_ids)`` tensor pair
(:class:`~.plan.TensorMemo`), without reading either on the host.
"""

from __future__ import annotations

import functools

import torch

from .external import installed
from .plan import TensorMemo

_block_masks = TensorMemo()


def flex_unavailable_reason(q: torch.Tensor | None = None, frame_ids=None) -> str | None:
    """Why flex_attention cannot run this call (None when it can)."""
    if not installed("torch.nn.attention.flex_attention"):
        return f"torch {torch.__version__} has no flex_attention (torch >= 2.5 does)"
    if q is None:
        return None
    if q.device.type == "cuda" and q.shape[-1] not in (16, 32, 64, 128, 256):
        return f"flex_attention's GPU kernels take head_dim 16, 32, 64, 128 or 256, got {q.shape[-1]}"
    if q.device.type != "cuda" and torch.is_grad_enabled() and q.requires_grad:
        return "flex_attention has no backward off CUDA; use it for inference there"
    return None


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def block_mask(cu_seqlens: torch.Tensor, frame_ids: torch.Tensor | None, total: int, device: torch.device):
    """The :class:`BlockMask` of a packed batch of ``total`` tokens (see the module docstring)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        positions = torch.arange(total, device=device)
        sequence = torch.bucketize(positions, cu_seqlens[1:].to(device, torch.int64), right=True)  # (total,)

        if frame_ids is None:
            def allowed(b, h, q_idx, kv_idx):
                return sequence[q_idx] == sequence[kv_idx]
        else:
            frames = frame_ids.to(device)

            def allowed(b, h, q_idx, kv_idx):
                return (sequence[q_idx] == sequence[kv_idx]) & (frames[kv_idx] <= frames[q_idx])

        return create_block_mask(allowed, None, None, total, total, device=device)

    return _block_masks.get((cu_seqlens, frame_ids), (total, str(device)), build)


def varlen_attention_flex(q, k, v, cu_seqlens, frame_ids=None, scale=None) -> torch.Tensor:
    """Flex backend of :func:`pyramid_core.attention.varlen_attention` (inputs pre-validated):
    ``q (T, H, D)``, ``k, v (T, H_kv, D)`` -> ``(T, H, D)``."""
    from torch.nn.attention.flex_attention import flex_attention

    mask = block_mask(cu_seqlens, frame_ids, q.shape[0], q.device)
    run = _compiled_flex() if q.device.type == "cuda" else flex_attention
    heads = (t.transpose(0, 1)[None] for t in (q, k, v))                        # (1, H, T, D)
    out = run(*heads, block_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out[0].transpose(0, 1)                                                # (T, H, D)
