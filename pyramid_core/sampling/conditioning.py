"""Pixels -> the normalised latents that image-to-video and continuation start from.

Pixels are ``(B, 3, T, H, W)`` floats in [-1, 1] (an image may be ``(B, 3, H, W)``), as the
VAE takes them; :func:`image_to_pixels` converts the usual ``uint8``/[0, 1] ``(H, W, 3)``
layouts exactly as the reference's ``ToTensor`` + ``Normalize(0.5, 0.5)`` does.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..latents import normalize_latents
from ..variants import Variant

__all__ = ["as_video_pixels", "encode_frames", "image_to_pixels"]


def image_to_pixels(image: torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)`` or ``(B, H, W, 3)`` uint8 (0-255) or float (0-1) -> ``(B, 3, H, W)`` in [-1, 1]."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) or (B, H, W, 3), got shape {tuple(image.shape)}")
    values = image.to(torch.float32) / 255 if image.dtype == torch.uint8 else image.to(torch.float32)
    return ((values - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()


def as_video_pixels(pixels: torch.Tensor, name: str = "pixels") -> torch.Tensor:
    """``(B, 3, H, W)`` or ``(B, 3, T, H, W)`` -> ``(B, 3, T, H, W)``; ``ValueError`` otherwise."""
    if pixels.ndim == 4:
        pixels = pixels[:, :, None]
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"{name} must be (B, 3, H, W) or (B, 3, T, H, W) in [-1, 1], got shape {tuple(pixels.shape)}")
    return pixels


def encode_frames(
    vae,
    pixels: torch.Tensor,
    variant: Variant | str,
    *,
    generator: Optional[torch.Generator] = None,
    sample: bool = True,
    posterior_noise: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    tile_size: Optional[int] = None,
) -> torch.Tensor:
    """Encode an image or a clip into normalised DiT latents.

    Args:
        vae: a :class:`pyramid_core.models.vae.CausalVideoVAE`.
        pixels: ``(B, 3, H, W)`` or ``(B, 3, 1 + 8k, H, W)`` in [-1, 1].
        variant: gives the normalisation (image constants for frame 0, video ones after).
        generator: draws the posterior noise when ``sample`` (the reference samples the
            posterior for image-to-video).
        sample: sample the posterior (``mean + std * eps``) instead of taking its mean.
        posterior_noise: ``eps`` to use instead of drawing (e.g. recorded reference noise).
        chunk_size, tile_size: passed to ``vae.encode``.

    Returns:
        ``(B, 16, 1 + k, H / 8, W / 8)`` fp32 normalised latents.
    """
    pixels = as_video_pixels(pixels)
    with torch.no_grad():
        posterior = vae.encode(pixels, chunk_size=chunk_size, tile_size=tile_size)
        if not sample:
            latents = posterior.mode()
        elif posterior_noise is not None:
            if posterior_noise.shape != posterior.mean.shape:
                raise ValueError(f"posterior_noise has shape {tuple(posterior_noise.shape)}, "
                                 f"expected {tuple(posterior.mean.shape)}")
            latents = posterior.mean + posterior.std * posterior_noise.to(posterior.mean)
        else:
            latents = posterior.sample(generator)
    return normalize_latents(latents.to(torch.float32), variant)
