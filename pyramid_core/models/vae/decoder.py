"""Causal video decoder: latents (B, C_lat, 1 + k, h, w) -> pixels (B, 3, 1 + 8k, 8h, 8w)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MidBlock, UpBlock, run_blocks
from .causal_conv3d import CausalCache, CausalConv3d
from .frame_norm import FrameGroupNorm


class CausalVaeDecoder(nn.Module):
    """conv_in -> mid block -> up blocks (widest first) -> norm, SiLU, conv_out."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: Sequence[int],
        spatial_up_sample: Sequence[bool],
        temporal_up_sample: Sequence[bool],
        norm_num_groups: int,
        block_dropout: Sequence[float],
    ) -> None:
        super().__init__()
        widths = list(reversed(block_out_channels))                 # up blocks go widest first
        self.conv_in = CausalConv3d(latent_channels, widths[0], kernel_size=3)
        self.mid_block = MidBlock(widths[0], norm_num_groups, block_dropout[-1])
        channels_in = [widths[0], *widths[:-1]]
        self.up_blocks = nn.ModuleList(
            UpBlock(
                layers_per_block[i], channels_in[i], widths[i], norm_num_groups,
                spatial_up_sample[i], temporal_up_sample[i], block_dropout[i],
            )
            for i in range(len(widths))
        )
        self.conv_norm_out = FrameGroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_out = CausalConv3d(block_out_channels[0], out_channels, kernel_size=3)
        self.gradient_checkpointing = False  # switched on by ModelMixin.enable_gradient_checkpointing

    def forward(self, z: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.conv_in(z, cache)                                  # (B, C_last, T, h, w)
        h = run_blocks(self, [self.mid_block, *self.up_blocks], h, cache)
        h = F.silu(self.conv_norm_out(h))                           # (B, C0, 1 + 8k, 8h, 8w)
        return self.conv_out(h, cache)                              # (B, 3, 1 + 8k, 8h, 8w)
