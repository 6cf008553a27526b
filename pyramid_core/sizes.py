"""Pixel <-> latent sizes, and the checks that make the pyramid possible.

A video of ``F`` frames at ``W x H`` pixels becomes a latent of shape
``(B, 16, 1 + (F - 1) / 8, H / 8, W / 8)``: the causal VAE keeps the first frame on its own
and packs every later 8 frames into one latent frame. The pyramid then halves the latent
width and height twice (3 stages) and the DiT packs 2x2 patches, so width and height must be
multiples of ``8 * 2**2 * 2 = 64`` pixels.
"""

from __future__ import annotations

import math
import os

from .variants import LATENT_CHANNELS, VAE_SPATIAL_FACTOR, VAE_TEMPORAL_FACTOR

PATCH_SIZE = 2
FRAMES_PER_SECOND = 24
# The largest side accepted (the released models are trained at 640x384 and 1280x768 and the
# image model at 1024x1024; 8192 px is already 40x their pixel count).
MAX_SIDE = 8192


def pixel_multiple(num_stages: int = 3) -> int:
    """Pixels that width and height must be a multiple of for ``num_stages`` stages."""
    return VAE_SPATIAL_FACTOR * 2 ** (num_stages - 1) * PATCH_SIZE


def check_video_size(width: int, height: int, num_stages: int = 3) -> None:
    """Raise ``ValueError`` unless every pyramid stage can halve ``width x height``."""
    multiple = pixel_multiple(num_stages)
    for name, value in (("width", width), ("height", height)):
        if value > MAX_SIDE:
            raise ValueError(
                f"{name}={value} px is above the largest size accepted ({MAX_SIDE} px); the released models "
                "generate 640x384 (384p) and 1280x768 (768p)"
            )
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
    """Pixel frames (``1 + 8k``, at 24 fps) for a clip of about ``seconds`` (>= 0); at least 1."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds={seconds}: give a length of 0 seconds or more (0 is a single frame)")
    units = round(seconds * FRAMES_PER_SECOND / VAE_TEMPORAL_FACTOR)
    return 1 + VAE_TEMPORAL_FACTOR * units


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


def check_latents_fit(shape: tuple[int, ...], free_bytes: int, where: str = "this device",
                      bytes_per_value: int = 4, what: str = "the latents") -> None:
    """Raise ``MemoryError`` with what fits when latents of ``shape`` (B, C, T, H, W) need more than ``free_bytes``.

    ``bytes_per_value`` counts every copy a caller keeps per latent value (4 for one fp32
    tensor; ``what`` names them). A check before allocating, so that the user reads what to
    change instead of the allocator's message, and nothing heavy has run yet.
    """
    needed = math.prod(shape) * bytes_per_value
    if needed <= free_bytes:
        return
    batch, channels, frames, height, width = shape
    per_latent_frame = batch * channels * height * width * bytes_per_value
    size = f"{width * VAE_SPATIAL_FACTOR}x{height * VAE_SPATIAL_FACTOR}"
    fitting = free_bytes // per_latent_frame
    if fitting >= 1:
        advice = f"at {size} at most {pixel_frames(int(min(fitting, frames)))} frames fit; use fewer frames"
    else:
        advice = f"not even one frame at {size} fits; lower the width and height"
    if batch > 1:
        advice += f" or a batch below {batch}"
    raise MemoryError(
        f"{what} of a {size} video of {pixel_frames(frames)} frames (latent shape {tuple(shape)}) need "
        f"{needed / 2**30:.1f} GiB, but {where} has {free_bytes / 2**30:.1f} GiB free: {advice}"
    )


# Host memory per latent value while a sampler starts a video: the fp32 result, the fp32
# noise of the whole video, and its float64 copy while it is shrunk to the coarsest stage.
SAMPLER_BYTES_PER_VALUE = 4 + 4 + 8


def check_sampler_fits(shape: tuple[int, ...], free_bytes: int, where: str) -> None:
    """:func:`check_latents_fit` for what a sampler holds for a video of latent ``shape``."""
    check_latents_fit(shape, free_bytes, where, SAMPLER_BYTES_PER_VALUE, "the latents and noise")


def free_host_memory() -> int | None:
    """Bytes of RAM available now, or None where the OS does not say (POSIX sysconf)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
