"""Pixel <-> latent sizes, and the checks that make the pyramid possible.

A video of ``F`` frames at ``W x H`` pixels becomes a latent of shape
``(B, 16, 1 + (F - 1) / 8, H / 8, W / 8)``: the causal VAE keeps the first frame on its own
and packs every later 8 frames into one latent frame. The pyramid then halves the latent
width and height twice (3 stages) and the DiT packs 2x2 patches, so width and height must be
multiples of ``8 * 2**2 * 2 = 64`` pixels.
"""

from __future__ import annotations

from .variants import LATENT_CHANNELS, VAE_SPATIAL_FACTOR, VAE_TEMPORAL_FACTOR

PATCH_SIZE = 2
FRAMES_PER_SECOND = 24


def pixel_multiple(num_stages: int = 3) -> int:
    """Pixels that width and height must be a multiple of for ``num_stages`` stages."""
    return VAE_SPATIAL_FACTOR * 2 ** (num_stages - 1) * PATCH_SIZE


def check_video_size(width: int, height: int, num_stages: int = 3) -> None:
    """Raise ``ValueError`` unless every pyramid stage can halve ``width x height``."""
    multiple = pixel_multiple(num_stages)
    for name, value in (("width", width), ("height", height)):
        if value < multiple or value % multiple:
            lower = max(multiple, value // multiple * multiple)
            raise ValueError(
                f"{name}={value} px: {num_stages} pyramid stages need a multiple of {multiple} px; "
                f"use {lower} or {lower + multiple}"
            )


def latent_frames(num_frames: int) -> int:
    """Latent frames for ``num_frames`` pixel frames (``1 + 8k``); ``ValueError`` otherwise."""
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_FACTOR:
        lower = max(1, (num_frames - 1) // VAE_TEMPORAL_FACTOR * VAE_TEMPORAL_FACTOR + 1)
        raise ValueError(
            f"{num_frames} frames: the causal VAE needs 1 + {VAE_TEMPORAL_FACTOR}k frames; "
            f"use {lower} or {lower + VAE_TEMPORAL_FACTOR}"
        )
    return 1 + (num_frames - 1) // VAE_TEMPORAL_FACTOR


def frames_for_seconds(seconds: float) -> int:
    """Pixel frames (``1 + 8k``, at 24 fps) for a clip of about ``seconds``; at least 1."""
    units = round(seconds * FRAMES_PER_SECOND / VAE_TEMPORAL_FACTOR)
    return 1 + VAE_TEMPORAL_FACTOR * max(units, 0)


def pixel_frames(num_latent_frames: int) -> int:
    """Pixel frames decoded from ``num_latent_frames`` latent frames."""
    return 1 + (num_latent_frames - 1) * VAE_TEMPORAL_FACTOR


def latent_shape(width: int, height: int, num_frames: int, batch_size: int = 1) -> tuple[int, int, int, int, int]:
    """``(B, C, T, H, W)`` of the full-resolution latent of a video, after checking the sizes."""
    check_video_size(width, height)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    return (
        batch_size,
        LATENT_CHANNELS,
        latent_frames(num_frames),
        height // VAE_SPATIAL_FACTOR,
        width // VAE_SPATIAL_FACTOR,
    )
