"""Latent normalisation between the VAE and the DiT, and the encode/decode entry points.

The DiT works on normalised latents: ``(latent - shift) * scale``. The first latent frame
(the image) uses the variant's image constants, every later frame the video constants
(see ``pyramid_core.variants``). The VAE config's ``scaling_factor`` is not used.
All functions take and return (B, C, T, H, W) tensors and never modify their input.
"""

from __future__ import annotations

import torch

from .variants import Variant, get_variant


def _as_variant(variant: Variant | str) -> Variant:
    return get_variant(variant) if isinstance(variant, str) else variant


def _check_latents(latents: torch.Tensor) -> None:
    if latents.ndim != 5 or latents.shape[2] < 1:
        raise ValueError(f"latents must be (B, C, T, H, W) with T >= 1, got shape {tuple(latents.shape)}")


def _image_frames(first_frame: int) -> int:
    """How many leading frames of a clip starting at video frame ``first_frame`` are the image."""
    if first_frame < 0:
        raise ValueError(f"first_frame={first_frame}: a latent frame index, 0 or more")
    return 1 if first_frame == 0 else 0


def normalize_latents(latents: torch.Tensor, variant: Variant | str, first_frame: int = 0) -> torch.Tensor:
    """VAE latents -> DiT latents: the video's frame 0 with the image shift/scale, later frames
    with the video ones. ``first_frame`` is the video frame index of ``latents[:, :, 0]`` (a
    clip cut from the middle of a video has no image frame)."""
    _check_latents(latents)
    v, n = _as_variant(variant), _image_frames(first_frame)
    image = (latents[:, :, :n] - v.image_latent_shift) * v.image_latent_scale
    video = (latents[:, :, n:] - v.video_latent_shift) * v.video_latent_scale
    return torch.cat([image, video], dim=2)


def denormalize_latents(latents: torch.Tensor, variant: Variant | str, first_frame: int = 0) -> torch.Tensor:
    """DiT latents -> VAE latents; the inverse of :func:`normalize_latents`."""
    _check_latents(latents)
    v, n = _as_variant(variant), _image_frames(first_frame)
    # Divide by the scale (not multiply by its inverse) to round exactly like the reference.
    image = latents[:, :, :n] / v.image_latent_scale + v.image_latent_shift
    video = latents[:, :, n:] / v.video_latent_scale + v.video_latent_shift
    return torch.cat([image, video], dim=2)


def encode_to_latents(
    vae,
    pixels: torch.Tensor,
    variant: Variant | str,
    generator: torch.Generator | None = None,
    sample: bool = True,
    chunk_size: int | None = None,
    tile_size: int | str | None = "auto",
) -> torch.Tensor:
    """Pixels (B, 3, 1 + 8k, H, W) in [-1, 1] -> normalised latents (B, 16, 1 + k, H/8, W/8).

    With ``sample`` the posterior is sampled with ``generator`` (the caller's RNG only);
    otherwise its mean is used. ``chunk_size``/``tile_size`` go to ``CausalVideoVAE.encode``.
    """
    with torch.no_grad():
        posterior = vae.encode(pixels, chunk_size=chunk_size, tile_size=tile_size)
        latents = posterior.sample(generator) if sample else posterior.mode()
    return normalize_latents(latents, variant)


def decode_from_latents(
    vae,
    latents: torch.Tensor,
    variant: Variant | str,
    chunk_size: int | None = 1,
    tile_size: int | str | None = "auto",
    progress=None,
) -> torch.Tensor:
    """Normalised latents (B, 16, 1 + k, h, w) -> pixels (B, 3, 1 + 8k, 8h, 8w) in about [-1, 1].

    Defaults decode one latent frame per chunk (the reference's memory-saving setting) in
    whole frames when they fit the free memory, else in tiles that do (``tile_size="auto"``);
    ``tile_size`` in pixels (a multiple of 8) or None (whole frames) chooses; ``progress`` is
    ``CausalVideoVAE.decode``'s. ``latents`` is left unchanged.
    """
    with torch.no_grad():
        return vae.decode(denormalize_latents(latents, variant), chunk_size=chunk_size, tile_size=tile_size,
                          progress=progress)
