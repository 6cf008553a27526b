"""Causal video encoder: pixels (B, 3, 1 + 8k, H, W) -> moments (B, 2*C_lat, 1 + k, H/8, W/8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock, MidBlock, run_blocks
from .causal_conv3d import CausalCache, CausalConv3d
from .frame_norm import FrameGroupNorm


class CausalVaeEncoder(nn.Module):
    """conv_in -> down blocks -> mid block -> norm, SiLU, conv_out (mean and logvar channels)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: Sequence[int],
        spatial_down_sample: Sequence[bool],
        temporal_down_sample: Sequence[bool],
        norm_num_groups: int,
        block_dropout: Sequence[float],
    ) -> None:
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], kernel_size=3)
        channels_in = [block_out_channels[0], *block_out_channels[:-1]]
        self.down_blocks = nn.ModuleList(
            DownBlock(
                layers_per_block[i], channels_in[i], block_out_channels[i], norm_num_groups,
                spatial_down_sample[i], temporal_down_sample[i], block_dropout[i],
            )
            for i in range(len(block_out_channels))
        )
        self.mid_block = MidBlock(block_out_channels[-1], norm_num_groups, block_dropout[-1])
        self.conv_norm_out = FrameGroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_out = CausalConv3d(block_out_channels[-1], 2 * latent_channels, kernel_size=3)
        self.gradient_checkpointing = False  # switched on by ModelMixin.enable_gradient_checkpointing

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.conv_in(x, cache)                                  # (B, C0, T, H, W)
        h = run_blocks(self, [*self.down_blocks, self.mid_block], h, cache)
        h = F.silu(self.conv_norm_out(h))                           # (B, C_last, 1 + k, H/8, W/8)
        return self.conv_out(h, cache)                              # (B, 2*C_lat, 1 + k, H/8, W/8)
