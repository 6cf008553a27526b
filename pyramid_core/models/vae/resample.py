"""Learned 2x down- and upsampling in space and in time.

Downsampling is a strided causal conv. Upsampling is a causal conv to 4x (space) or 2x
(time) channels followed by depth-to-space. Temporal upsampling turns T latent frames
into 2T, and drops the first output frame of the first chunk, because the first latent
frame stands for a single image frame: 1 + k latent frames become 1 + 2k.
"""

from __future__ import annotations

import torch
from torch import nn

from .causal_conv3d import CausalCache, CausalConv3d, is_first_chunk


@torch.no_grad()
def init_as_nearest(conv: nn.Conv3d, factor: int) -> None:
    """Make a conv that feeds a depth-to-space start as nearest-neighbour upsampling (ICNR).

    ``conv`` has ``C * factor`` output channels, channel ``c * factor + p`` going to position
    ``p`` of output channel ``c``. Copying one random kernel to all ``factor`` positions makes
    the shuffled output start as that kernel's output repeated ``factor`` times, instead of
    ``factor`` unrelated random images interleaved: a freshly made VAE then trains without
    checkerboard artefacts and, on the toy world, reaches half the reconstruction error in
    the same steps (Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution").
    Loaded checkpoints overwrite this, so it only matters for training from scratch.
    """
    conv.weight.copy_(conv.weight[::factor].repeat_interleave(factor, dim=0))
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[::factor].repeat_interleave(factor, dim=0))


class SpatialDownsample2x(nn.Module):
    """(B, C, T, H, W) -> (B, C, T, ceil(H/2), ceil(W/2))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=(1, 2, 2))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return self.conv(x, cache)


class TemporalDownsample2x(nn.Module):
    """(B, C, 1 + 2k, H, W) -> (B, C, 1 + k, H, W); a later chunk of 2k frames gives k."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return self.conv(x, cache)


class SpatialUpsample2x(nn.Module):
    """(B, C, T, H, W) -> (B, C, T, 2H, 2W) by conv to 4C channels and pixel shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 4, kernel_size=3)
        init_as_nearest(self.conv.conv, 4)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.conv(x, cache)                                      # (B, C*2*2, T, H, W)
        b, c4, t, hh, ww = h.shape
        h = h.reshape(b, c4 // 4, 2, 2, t, hh, ww)                   # channel index = c*4 + p1*2 + p2
        h = h.permute(0, 1, 4, 5, 2, 6, 3)                           # (B, C, T, H, p1, W, p2)
        return h.reshape(b, c4 // 4, t, hh * 2, ww * 2)


class TemporalUpsample2x(nn.Module):
    """(B, C, T, H, W) -> (B, C, 2T - 1, H, W) for the first chunk, (B, C, 2T, H, W) after."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 2, kernel_size=3)
        init_as_nearest(self.conv.conv, 2)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.conv(x, cache)                                      # (B, C*2, T, H, W)
        b, c2, t, hh, ww = h.shape
        h = h.reshape(b, c2 // 2, 2, t, hh, ww).transpose(2, 3)      # channel index = c*2 + p
        h = h.reshape(b, c2 // 2, t * 2, hh, ww)                     # (B, C, 2T, H, W)
        return h[:, :, 1:] if is_first_chunk(cache) else h
