"""Causal 3D convolution: a frame never sees the frames after it.

The time axis is padded on the front only (with zeros), so output frame ``t`` depends on
input frames ``<= t``. Because of that a long video can be processed in temporal chunks:
a :class:`CausalCache` carries, for every convolution, the input frames that the next
chunk's first window still needs. Chunked and unchunked runs then give the same result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalCache:
    """State shared by one encoder or decoder pass over consecutive temporal chunks.

    ``first_chunk`` is True while the first chunk (the one holding the image frame) runs;
    the driver clears it before the next chunk. ``tails`` maps each causal convolution to
    the trailing frames of its padded input that its next window starts on.
    """

    def __init__(self) -> None:
        self.first_chunk = True
        self.tails: dict[nn.Module, torch.Tensor] = {}


def is_first_chunk(cache: CausalCache | None) -> bool:
    """True for an unchunked pass (no cache) and for the first chunk of a chunked one."""
    return cache is None or cache.first_chunk


class CausalConv3d(nn.Module):
    """``nn.Conv3d`` (kept as ``.conv`` for the checkpoint names) with causal time padding.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: int or (time, height, width); height and width must be odd.
        stride: int (applied to time only, as in the reference) or (time, height, width).
        bias: whether the convolution has a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        strides = (stride, 1, 1) if isinstance(stride, int) else tuple(stride)
        k_t, k_h, k_w = kernel
        if k_h % 2 == 0 or k_w % 2 == 0:
            raise ValueError(f"spatial kernel sizes must be odd, got {kernel}")
        self.time_kernel = k_t
        self.time_stride = strides[0]
        # F.pad order: (w_left, w_right, h_top, h_bottom, t_front, t_back)
        self.time_padding = (0, 0, 0, 0, k_t - 1, 0)
        # The spatial zero padding is the convolution's own (k // 2 on each side, as the
        # reference pads): the same sums without a padded copy of every input.
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=strides, bias=bias,
                              padding=(0, k_h // 2, k_w // 2))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # x: (B, C, T, H, W)
        if self.time_kernel == 1:
            return self.conv(x)
        tail = None if cache is None else cache.tails.get(self)
        if tail is None and x.shape[2] == 1:  # one frame, nothing before it: no padded copy to convolve
            if cache is not None:
                self.keep_tail(F.pad(x, self.time_padding), cache)
            return self.single_frame(x)
        x = F.pad(x, self.time_padding) if tail is None else torch.cat([tail, x], dim=2)  # zeros before frame 0
        if cache is not None:
            self.keep_tail(x, cache)
        return self.conv(x)  # (B, C_out, T_out, H_out, W_out)

    def keep_tail(self, padded: torch.Tensor, cache: CausalCache) -> None:
        """Keep the frames of ``padded`` (this chunk's input with its front padding or the last
        chunk's tail) that the next chunk's first window starts on: everything after the last
        window that fits in this chunk."""
        num_windows = (padded.shape[2] - self.time_kernel) // self.time_stride + 1
        cache.tails[self] = padded[:, :, num_windows * self.time_stride :].clone()

    def single_frame(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of one frame with nothing before it: (B, C, 1, H, W) -> (B, C_out, 1, H', W').

        Padded in front, the frame is the last of the only window, so every earlier time tap
        multiplies zeros: the output is the last tap's 2D convolution, at a third of the work
        for a 3-tap kernel (an image encoded, a VAE trained on still frames). The earlier taps'
        gradients are zero either way (in the full convolution they are sums of products with
        zeros), so training steps on still frames are the same up to the order of the sums.
        """
        conv = self.conv
        return F.conv3d(x, conv.weight[:, :, -1:], conv.bias, stride=(1, *conv.stride[1:]),
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
