"""Group normalisation applied to every frame on its own.

Statistics never mix frames, so a frame's output does not depend on the frames after it
(this keeps the VAE causal and makes temporal chunking exact).
"""

from __future__ import annotations

import torch
from torch import nn


class FrameGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over (C, H, W) of each frame of a (B, C, T, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)          # (B*T, C, H, W)
        frames = super().forward(frames)
        return frames.reshape(b, t, c, h, w).transpose(1, 2)        # (B, C, T, H, W)
