"""Single-head spatial self-attention inside each frame (the VAE's mid-block attention).

Parameter names follow diffusers' ``Attention`` (``group_norm``, ``to_q``, ``to_k``,
``to_v``, ``to_out.0``) so the released checkpoint loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrameAttention(nn.Module):
    """Pre-norm residual self-attention over the H*W positions of every frame.

    One head as wide as the channels; no attention across frames, so it stays causal.
    """

    def __init__(self, channels: int, norm_num_groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(norm_num_groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h * w)          # (B*T, C, HW)
        tokens = self.group_norm(frames).transpose(1, 2)             # (B*T, HW, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        # The reference upcasts the softmax; run the product in fp32 for low-precision weights.
        out = F.scaled_dot_product_attention(
            q.unsqueeze(1).float(), k.unsqueeze(1).float(), v.unsqueeze(1).float()
        ).squeeze(1).to(tokens.dtype)                                # (B*T, HW, C)
        out = self.to_out[0](out).transpose(1, 2) + frames           # (B*T, C, HW)
        return out.reshape(b, t, c, h, w).transpose(1, 2)            # (B, C, T, H, W)
