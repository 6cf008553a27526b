"""The encoder's down blocks, the decoder's up blocks and the shared mid block.

Module and attribute names (``resnets``, ``downsamplers``, ``temporal_downsamplers``,
``upsamplers``, ``temporal_upsamplers``, ``attentions``) are those of the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.utils.checkpoint
from torch import nn

from .attention import FrameAttention
from .causal_conv3d import CausalCache
from .resample import SpatialDownsample2x, SpatialUpsample2x, TemporalDownsample2x, TemporalUpsample2x
from .resnet import CausalResnetBlock3D


def _resnet_stack(
    num_layers: int, in_channels: int, out_channels: int, norm_num_groups: int, dropout: float
) -> nn.ModuleList:
    return nn.ModuleList(
        CausalResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, norm_num_groups, dropout)
        for i in range(num_layers)
    )


def _optional(module: nn.Module, enabled: bool) -> nn.ModuleList | None:
    # The checkpoint stores each resampler as the only entry of a list (".0.").
    return nn.ModuleList([module]) if enabled else None


class DownBlock(nn.Module):
    """Residual blocks, then optional 2x spatial and 2x temporal downsampling."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        out_channels: int,
        norm_num_groups: int,
        spatial_downsample: bool,
        temporal_downsample: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.resnets = _resnet_stack(num_layers, in_channels, out_channels, norm_num_groups, dropout)
        self.downsamplers = _optional(SpatialDownsample2x(out_channels), spatial_downsample)
        self.temporal_downsamplers = _optional(TemporalDownsample2x(out_channels), temporal_downsample)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        for resamplers in (self.downsamplers, self.temporal_downsamplers):
            if resamplers is not None:
                x = resamplers[0](x, cache)
        return x


class UpBlock(nn.Module):
    """Residual blocks, then optional 2x spatial and 2x temporal upsampling."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        out_channels: int,
        norm_num_groups: int,
        spatial_upsample: bool,
        temporal_upsample: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.resnets = _resnet_stack(num_layers, in_channels, out_channels, norm_num_groups, dropout)
        self.upsamplers = _optional(SpatialUpsample2x(out_channels), spatial_upsample)
        self.temporal_upsamplers = _optional(TemporalUpsample2x(out_channels), temporal_upsample)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        for resamplers in (self.upsamplers, self.temporal_upsamplers):
            if resamplers is not None:
                x = resamplers[0](x, cache)
        return x


class MidBlock(nn.Module):
    """resnet -> per-frame attention -> resnet, at the lowest resolution."""

    def __init__(self, channels: int, norm_num_groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.resnets = _resnet_stack(2, channels, channels, norm_num_groups, dropout)
        self.attentions = nn.ModuleList([FrameAttention(channels, norm_num_groups)])

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


def run_blocks(owner: nn.Module, blocks: Iterable[nn.Module], h: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
    """Apply ``blocks`` in order, under activation checkpointing when ``owner`` has it on.

    Checkpointing is for training only (grad enabled, no temporal chunk cache). diffusers
    sets ``gradient_checkpointing`` and, in recent versions, ``_gradient_checkpointing_func``.
    """
    if not (owner.gradient_checkpointing and torch.is_grad_enabled() and cache is None):
        for block in blocks:
            h = block(h, cache)
        return h
    checkpoint = getattr(owner, "_gradient_checkpointing_func", None) or _checkpoint
    for block in blocks:
        h = checkpoint(block, h)
    return h


def _checkpoint(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
