"""Portable attention on ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .plan import _runs, pack_plan


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


def frame_blocks(frame_ids: torch.Tensor) -> list[int] | None:
    """Where the frame id changes in one sequence's ``(L,)`` ids: the end offset of every run of
    equal ids, e.g. ``[0, 0, 1, 1, 1, 2] -> [2, 5, 6]``; None when the ids ever decrease.

    With non-decreasing ids the frame-causal mask is block lower-triangular: the queries of
    run ``r`` see exactly the keys before that run's end.
    """
    runs = _runs(frame_ids.cpu())
    return None if runs is None else list(runs)


def _attend_masked(qs, ks, vs, frame_ids, scale, gqa) -> torch.Tensor:
    """``(1, H, L, D)`` attention with the dense boolean frame-causal mask."""
    mask = frame_causal_mask(frame_ids)[None, None]
    return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=gqa)


def _attend_blocks(qs, ks, vs, ends: list[int], scale, gqa, out: torch.Tensor) -> None:
    """Frame-causal attention of ``(1, H, L, D)`` q, k, v as one unmasked SDPA per run of equal
    frame ids: its queries over the key prefix up to the run's end, written to ``out``
    ``(L, H, D)``. Unmasked calls take SDPA's fused (flash) kernels on every device, and the
    blocks above the diagonal are never computed. Exact: masked keys carry zero weight, so
    leaving them out changes no sum."""
    start = 0
    for end in ends:
        o = F.scaled_dot_product_attention(qs[:, :, start:end], ks[:, :, :end], vs[:, :, :end], scale=scale,
                                           enable_gqa=gqa)                 # (1, H, run, D)
        out[start:end] = o[0].transpose(0, 1)
        start = end


def varlen_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    frame_ids: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    block_causal: bool = True,
) -> torch.Tensor:
    """SDPA backend of :func:`pyramid_core.attention.varlen_attention` (inputs pre-validated).

    One SDPA call per sequence, or with ``frame_ids`` one per run of equal frame ids over its
    key prefix (:func:`frame_blocks`; the models' ids never decrease within a sequence: text
    at 0, then the history clips, the noisy clip last). Ids that do decrease, or
    ``block_causal=False``, use one call with the dense boolean mask instead. Reads
    ``cu_seqlens`` and ``frame_ids`` on the host once per tensor object
    (:func:`~pyramid_core.attention.plan.pack_plan`): a model that passes the same index
    tensors to every layer synchronises once, not once per layer. Grouped-query heads use
    SDPA's ``enable_gqa``.
    """
    out = torch.empty_like(q)
    gqa = k.shape[1] != q.shape[1]
    plan = pack_plan(cu_seqlens, frame_ids)
    bounds = plan.bounds
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, D)
        ends = plan.frame_runs[b] if frame_ids is not None and block_causal else None
        if ends is not None and len(ends) > 1:
            # contiguous heads once, so no block call copies its key prefix again
            qs, ks, vs = (t.contiguous() for t in (qs, ks, vs))
            _attend_blocks(qs, ks, vs, ends, scale, gqa, out[start:end])
            continue
        if frame_ids is not None and ends is None:
            o = _attend_masked(qs, ks, vs, frame_ids[start:end], scale, gqa)
        else:                                        # no mask, or every token in one frame
            o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, enable_gqa=gqa)
        out[start:end] = o[0].transpose(0, 1)
    return out
