"""Portable attention on ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Dense attention.

    Args:
        q, k, v: ``(B, H, Lq, D)``, ``(B, H, Lk, D)``, ``(B, H, Lk, D)``.
        mask: optional boolean ``(B or 1, H or 1, Lq, Lk)``; True means "may attend".
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        ``(B, H, Lq, D)``.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def frame_causal_mask(frame_ids: torch.Tensor) -> torch.Tensor:
    """``(L,)`` int frame ids -> ``(L, L)`` bool mask, True where ``frame[j] <= frame[i]``."""
    return frame_ids[None, :] <= frame_ids[:, None]


def varlen_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    frame_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA backend of :func:`pyramid_core.attention.varlen_attention` (inputs pre-validated).

    One SDPA call per sequence, with an explicit boolean frame-causal mask when ``frame_ids``
    is given. Reads ``cu_seqlens`` on the host (one sync on CUDA). Grouped-query heads use
    SDPA's ``enable_gqa``.
    """
    out = torch.empty_like(q)
    gqa = k.shape[1] != q.shape[1]
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        mask = None
        if frame_ids is not None:
            mask = frame_causal_mask(frame_ids[start:end])[None, None]
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, D)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[start:end] = o[0].transpose(0, 1)
    return out
