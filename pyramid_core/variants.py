"""Every per-variant constant of Pyramid Flow, in one table.

The reference scatters these over branches of its pipeline constructor; here a variant is
one frozen record that the loaders, samplers, VAE helpers and trainer all read.
"""

from __future__ import annotations

from dataclasses import dataclass

# Later (video) latent frames are normalised the same way in every variant.
VIDEO_LATENT_SHIFT = -0.2343
VIDEO_LATENT_SCALE = 1 / 3.0986

# Appended to positive prompts only, as the reference does.
PROMPT_SUFFIX = ", hyper quality, Ultra HD, 8K"
DEFAULT_NEGATIVE_PROMPT = (
    "cartoon style, worst quality, low quality, blurry, absolute black, absolute white, "
    "low res, extra limbs, extra digits, misplaced objects, mutated anatomy, monochrome, horror"
)

VAE_SPATIAL_FACTOR = 8   # pixels per latent pixel
VAE_TEMPORAL_FACTOR = 8  # pixel frames per latent frame after the first
LATENT_CHANNELS = 16


@dataclass(frozen=True)
class Variant:
    """Constants of one released Pyramid Flow model.

    ``image_latent_*`` normalise the first latent frame, ``video_latent_*`` the later ones:
    ``normalised = (latent - shift) * scale``.
    """

    name: str
    family: str                      # "flux" (miniFLUX) or "mmdit" (SD3)
    width: int                       # default output size in pixels
    height: int
    max_latent_frames: int           # longest video the model was trained on, in latent frames
    image_latent_shift: float
    image_latent_scale: float
    video_latent_shift: float = VIDEO_LATENT_SHIFT
    video_latent_scale: float = VIDEO_LATENT_SCALE
    frame_per_unit: int = 1          # latent frames generated per autoregressive unit
    num_stages: int = 3
    stage_range: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
    scheduler_gamma: float = 1 / 3
    timestep_shift: float = 1.0


_FLUX_IMAGE = dict(image_latent_shift=-0.04, image_latent_scale=1 / 1.8726)
_SD3_IMAGE = dict(image_latent_shift=0.1490, image_latent_scale=1 / 1.8415)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("miniflux-384p", "flux", 640, 384, 16, **_FLUX_IMAGE),
        Variant("miniflux-768p", "flux", 1280, 768, 31, **_FLUX_IMAGE),
        Variant("sd3-768p", "mmdit", 1280, 768, 31, **_SD3_IMAGE),
    )
}


def get_variant(name: str) -> Variant:
    """Look a variant up by name; the error lists the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown Pyramid Flow variant {name!r}; choose one of {sorted(VARIANTS)}") from None


def detect_variant(family: str, name: str = "") -> Variant:
    """The variant of a DiT checkpoint: its tensors give the family, its name the resolution.

    Args:
        family: ``"flux"`` or ``"mmdit"`` (``pyramid_core.loading.detect_kind``).
        name: file or folder name; miniFLUX 384p and 768p have identical tensors, and the
            official folders (``diffusion_transformer_768p``) and usual file names say which.

    Returns:
        The matching :class:`Variant`; miniFLUX names without "768" are the 384p model.
    """
    candidates = [v for v in VARIANTS.values() if v.family == family]
    if not candidates:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {sorted({v.family for v in VARIANTS.values()})}")
    if len(candidates) == 1:
        return candidates[0]
    by_height = {str(v.height): v for v in candidates}
    for height, variant in sorted(by_height.items(), key=lambda item: -int(item[0])):
        if height in name:
            return variant
    return min(candidates, key=lambda v: v.height)
