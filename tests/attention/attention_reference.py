"""Independent reference for the attention tests: per-sequence SDPA with explicit boolean masks.

Deliberately shares no code with pyramid_core.attention (its own mask, its own GQA expansion),
so every backend is measured against the same definition:
token i attends token j of its own sequence iff frame_ids[j] <= frame_ids[i].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_cu_seqlens(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def reference_varlen(q, k, v, cu_seqlens, frame_ids=None, scale=None):
    """(total, H, D) in q's dtype; computed in fp32."""
    group = q.shape[1] // k.shape[1]
    out = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs = q[start:end].float().transpose(0, 1)  # (H, L, D)
        ks = k[start:end].float().repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[start:end].float().repeat_interleave(group, dim=1).transpose(0, 1)
        length = end - start
        if frame_ids is None:
            mask = torch.ones(length, length, dtype=torch.bool)
        else:
            f = frame_ids[start:end].long()
            mask = torch.stack([f <= f[i] for i in range(length)]) if length else torch.ones(0, 0, dtype=torch.bool)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
        out.append(o.transpose(0, 1))
    return torch.cat(out).to(q.dtype)


def frames_per_sequence(lengths, tokens_per_frame, text_tokens=0) -> torch.Tensor:
    """Pyramid-Flow-like layout per sequence: ``text_tokens`` at frame 0, then frames 0, 1, ..."""
    ids = []
    for length in lengths:
        text = min(text_tokens, length)
        ids.append(torch.zeros(text, dtype=torch.int32))
        ids.append((torch.arange(length - text) // tokens_per_frame).to(torch.int32))
    return torch.cat(ids)
