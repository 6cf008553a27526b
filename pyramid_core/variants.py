"""Every per-variant constant of Pyramid Flow, in one table.

The reference scatters these over branches of its pipeline constructor; here a variant is
one frozen record that the loaders, samplers, VAE helpers and trainer all read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


# The reference README's settings where no variant says otherwise: 20 Euler steps per stage
# for the first frame, 10 for video units ("num_inference_steps=[20, 20, 20],
# video_num_inference_steps=[10, 10, 10]"), video guidance 5 ("video_guidance_scale=5.0").
FIRST_FRAME_STEPS = (20, 20, 20)
VIDEO_STEPS = (10, 10, 10)
VIDEO_GUIDANCE = 5.0
# Image-to-video: the README's example and video_generation_demo.ipynb use video guidance 4
# and 10 steps per stage ("video_guidance_scale=4.0").
IMAGE_TO_VIDEO_GUIDANCE = 4.0


@dataclass(frozen=True)
class Variant:
    """Constants of one released Pyramid Flow model.

    ``image_latent_*`` normalise the first latent frame, ``video_latent_*`` the later ones:
    ``normalised = (latent - shift) * scale``. ``guidance_scale`` and the steps are the
    reference's settings for this checkpoint (sources beside each entry of :data:`VARIANTS`).
    """

    name: str
    family: str                      # "flux" (miniFLUX) or "mmdit" (SD3)
    folder: str                      # its folder in the official release
    width: int                       # default output size in pixels
    height: int
    max_latent_frames: int           # longest video the model was trained on, in latent frames
    image_latent_shift: float
    image_latent_scale: float
    guidance_scale: float            # first-frame guidance the reference recommends
    video_guidance_scale: float = VIDEO_GUIDANCE
    steps: tuple[int, ...] = FIRST_FRAME_STEPS
    video_steps: tuple[int, ...] = VIDEO_STEPS
    sizes: tuple[tuple[int, int], ...] = ()   # (width, height) it was trained at, beside the default
    video_latent_shift: float = VIDEO_LATENT_SHIFT
    video_latent_scale: float = VIDEO_LATENT_SCALE
    frame_per_unit: int = 1          # latent frames generated per autoregressive unit
    num_stages: int = 3
    stage_range: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
    scheduler_gamma: float = 1 / 3
    timestep_shift: float = 1.0

    @property
    def image_only(self) -> bool:
        """A text-to-image checkpoint: one latent frame, no video units."""
        return self.max_latent_frames == 1


# First-frame (image) latent normalisation per family (the reference pipeline's constructor).
_FLUX_IMAGE = dict(image_latent_shift=-0.04, image_latent_scale=1 / 1.8726)
_SD3_IMAGE = dict(image_latent_shift=0.1490, image_latent_scale=1 / 1.8415)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # README: "the 384p checkpoint generates 5-second video" ("set temp up to 16"), first-frame
        # guidance "set it to 7 for 384p variant".
        Variant("miniflux-384p", "flux", "diffusion_transformer_384p", 640, 384, 16, **_FLUX_IMAGE,
                guidance_scale=7.0),
        # README: "the 768p checkpoint generates up to 10-second video" (temp 31), guidance
        # "within [7, 9]"; app.py's slider starts at 9.0.
        Variant("miniflux-768p", "flux", "diffusion_transformer_768p", 1280, 768, 31, **_FLUX_IMAGE,
                guidance_scale=9.0),
        # image_generation_demo.ipynb: temp=1, num_inference_steps=[20, 20, 20], guidance_scale=9.0,
        # "3 aspect ratios" 1024x1024, 1280x768, 768x1280 (also the training sizes).
        Variant("miniflux-image", "flux", "diffusion_transformer_image", 1024, 1024, 1, **_FLUX_IMAGE,
                guidance_scale=9.0, sizes=((1024, 1024), (1280, 768), (768, 1280))),
        # README: "the SD3-based models support 768p and 384p video generation", with the same
        # lengths and guidance as miniFLUX's; identical configs, the size is the caller's.
        Variant("sd3-384p", "mmdit", "diffusion_transformer_384p", 640, 384, 16, **_SD3_IMAGE,
                guidance_scale=7.0),
        Variant("sd3-768p", "mmdit", "diffusion_transformer_768p", 1280, 768, 31, **_SD3_IMAGE,
                guidance_scale=9.0),
    )
}


def get_variant(name: str) -> Variant:
    """Look a variant up by name; the error lists the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown Pyramid Flow variant {name!r}; choose one of {sorted(VARIANTS)}") from None


# What a checkpoint's name says, in order: a resolution in the name wins over "image" (an
# image-to-video fine-tune named "..._image2video_384p" is a 384p video model).
_NAME_HINTS = (("384", "384p"), ("768", "768p"), ("image", "image"), ("1024", "image"))
# A name that says nothing: miniFLUX files without a resolution are the 384p model
# (pyramid_flow_miniflux_bf16_v1/v2, the community files of the 384p release, and the
# 768p ones say "768"); SD3 was released at 768p first.
_UNNAMED = {"flux": "384p", "mmdit": "768p"}


def choose_variant(family: str, name: str = "", override: str = "auto") -> tuple[Variant, str]:
    """The variant of a DiT checkpoint, and why, in a sentence for the user.

    Args:
        family: ``"flux"`` or ``"mmdit"``, from the tensors (``pyramid_core.loading``).
        name: file or folder name (path): miniFLUX 384p, 768p and 1024p-image, and SD3 384p
            and 768p, have identical tensors; the official folders
            (``diffusion_transformer_768p``) and the usual file names say which.
        override: a variant name that wins over the name, or ``"auto"``.

    Returns:
        ``(variant, reason)``.
    """
    candidates = {v.name.split("-", 1)[1]: v for v in VARIANTS.values() if v.family == family}
    if not candidates:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {sorted({v.family for v in VARIANTS.values()})}")
    shown = "/".join(Path(name).parts[-2:]) if name else ""      # folder/file: a file inside an official folder
    lowered = shown.lower()
    hint = next(((token, suffix) for token, suffix in _NAME_HINTS if token in lowered and suffix in candidates), None)
    if hint is not None:
        detected, why = candidates[hint[1]], f"the name {shown!r} contains {hint[0]!r}"
    else:
        detected = candidates[_UNNAMED[family]]
        why = (f"the name {shown!r} names no resolution, and such {family} files hold the "
               f"{_UNNAMED[family]} model") if name else f"no name to go by: the {_UNNAMED[family]} model"
    if override == "auto":
        return detected, f"{detected.name}: the tensors are {family}; {why}"
    chosen = get_variant(override)
    if chosen.family != family:
        raise ValueError(f"variant {chosen.name} is a {chosen.family} model, but the checkpoint's tensors are "
                         f"{family}: choose a {family} variant or auto")
    if chosen is detected:
        return chosen, f"{chosen.name}: chosen on the node (the name agrees)"
    return chosen, f"{chosen.name}: chosen on the node, overriding {detected.name} ({why})"


def detect_variant(family: str, name: str = "") -> Variant:
    """The variant of a DiT checkpoint from its family and name (see :func:`choose_variant`)."""
    return choose_variant(family, name)[0]
