"""Causal residual block: (norm, SiLU, causal conv) twice plus a skip connection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .causal_conv3d import CausalCache, CausalConv3d
from .frame_norm import FrameGroupNorm


class CausalResnetBlock3D(nn.Module):
    """Pre-norm residual block; a 1x1x1 ``conv_shortcut`` matches channels when they change."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_num_groups: int,
        dropout: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(norm_num_groups, in_channels, eps=eps)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.norm2 = FrameGroupNorm(norm_num_groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.conv_shortcut = (
            CausalConv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # Without autograd the activations and the sum are done in place on tensors made here
        # (never on x): one full-size tensor fewer alive at each step, the same values.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace), cache)     # (B, C_out, T, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)), cache)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x, cache)
        return h.add_(skip) if inplace else skip + h
