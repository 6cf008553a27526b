"""Text-to-video, image-to-video and video continuation, composed of the sampling blocks.

Every pipeline runs the same numbered steps:

1. check inputs (sizes, frame counts, steps, guidance) -- before anything heavy;
2. encode the prompt (or take the given :class:`TextConditioning`);
3. prepare latents: coarse initial noise, and the latents of the given image/clip;
4. for every new temporal unit: build its temporal history, sample it through the stages
   (:func:`sample_unit` = set timesteps, denoise, stage transitions), with step reports.

All three are :func:`sample_video` with a different *context* (the latents the video
starts with): none for text-to-video, the image's latent for image-to-video, a clip's
latents for continuation. Output latents are normalised DiT latents ``(B, 16, T, h, w)``
including the context frames; decode them with :func:`pyramid_core.latents.decode_from_latents`.

Randomness comes only from the caller's ``generator``, in this order: the VAE posterior
noise (when pixels are encoded and sampled), the coarse noise of the whole video (one draw
of the full latent shape, as the reference), then the block noise of every stage transition.
Same seed, same video. Any of them can be injected instead (``noise``,
``posterior_noise``, ``block_noise``) to reproduce another run exactly.

Unit ``u`` of the video (latent frames ``[start, stop)``) is denoised from frames
``[start, stop)`` of the coarse noise drawn for the *whole* output video. The reference
does the same for text-to-video; its image-to-video takes frames ``[start - 1, stop - 1)``
instead. Here image-to-video is continuation from one frame, so a video generated from a
t2v video's first frame with the same seed starts from the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ..noise import initial_noise
from ..scheduling import PyramidFlowScheduler
from ..sizes import check_video_size, latent_frames, latent_shape
from ..variants import LATENT_CHANNELS, VAE_SPATIAL_FACTOR, Variant, get_variant
from .conditioning import as_video_pixels, encode_frames
from .guidance import TextConditioning, encode_text
from .history import HistoryConfig, build_temporal_history
from .progress import StepCallback, rebased_callback
from .schedules import GuidanceSchedule
from .timeline import unit_start_seconds
from .settings import (DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_VIDEO_GUIDANCE, DEFAULT_VIDEO_STEPS, PerStage,
                       SamplingSettings)
from .stages import BlockNoiseSource, generator_block_noise, sample_unit

__all__ = [
    "UnitPlan",
    "continue_video",
    "image_to_video",
    "plan_units",
    "sample_video",
    "text_to_video",
]

TextInput = Union[TextConditioning, str, Sequence[str]]


@dataclass(frozen=True)
class UnitPlan:
    """Latent frames ``[start, stop)`` of one unit to generate; ``first_frame`` for frame 0."""

    index: int
    start: int
    stop: int

    @property
    def first_frame(self) -> bool:
        return self.start == 0


def plan_units(context_frames: int, total_frames: int, frame_per_unit: int) -> list[UnitPlan]:
    """The units that extend ``context_frames`` latent frames to ``total_frames``.

    Frame 0 is a unit of its own (the image); every later unit has ``frame_per_unit`` frames.
    ``ValueError`` if the new frames do not split into whole units.
    """
    if context_frames < 0 or total_frames < max(context_frames, 1):
        raise ValueError(f"cannot extend {context_frames} latent frames to {total_frames}")
    units, start = [], context_frames
    if start == 0:
        units.append(UnitPlan(0, 0, 1))
        start = 1
    if (total_frames - start) % frame_per_unit:
        raise ValueError(
            f"{total_frames - start} new latent frames after frame {start} do not split into units of "
            f"{frame_per_unit} frames; choose a length of 1 + {frame_per_unit}k latent frames"
        )
    for begin in range(start, total_frames, frame_per_unit):
        units.append(UnitPlan(len(units), begin, begin + frame_per_unit))
    return units


def _resolve_text(text: TextInput, text_encoder) -> TextConditioning:
    if isinstance(text, TextConditioning):
        return text
    if text_encoder is None:
        raise ValueError("text is a prompt string: pass text_encoder= too, or give TextConditioning embeddings")
    return encode_text(text_encoder, text)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sample_video(
    dit: torch.nn.Module,
    text: TextConditioning,
    *,
    context: Optional[torch.Tensor],
    num_latent_frames: int,
    latent_size: tuple[int, int],
    variant: Variant | str,
    settings: SamplingSettings,
    history: HistoryConfig = HistoryConfig(),
    scheduler: Optional[PyramidFlowScheduler] = None,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    block_noise: Optional[BlockNoiseSource] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Extend ``context`` (or nothing) to ``num_latent_frames`` latent frames, unit by unit.

    Args:
        dit: a pyramid DiT.
        text: prompt embeddings (batch 1 or B).
        context: ``(B, 16, T_ctx, h, w)`` normalised latents the video starts with, or None.
        num_latent_frames: latent frames of the result, context included.
        latent_size: ``(h, w)`` full latent size.
        variant: constants (frames per unit, stages) of the model.
        settings: steps and guidance of the first frame and of the video units.
        history: temporal history controls.
        scheduler: default ``PyramidFlowScheduler.from_variant(variant)``.
        generator: the only source of randomness (see the module docstring).
        noise: ``(B, 16, T_new, h / 2**(S-1), w / 2**(S-1))`` coarse noise of the new frames
            to use instead of drawing.
        block_noise: source of the stage-transition noise instead of ``generator``.
        callback: :class:`StepInfo` after every step, counted over the whole video.

    Returns:
        ``(B, 16, num_latent_frames, h, w)`` fp32 latents, the context unchanged in front.
    """
    variant = get_variant(variant) if isinstance(variant, str) else variant
    scheduler = scheduler or PyramidFlowScheduler.from_variant(variant)
    num_stages = scheduler.num_stages
    device = _device(dit)
    batch = context.shape[0] if context is not None else text.batch_size
    height, width = latent_size
    context_frames = 0 if context is None else context.shape[2]
    if variant.image_only and num_latent_frames > 1:
        raise ValueError(f"{variant.name} makes single images, not {num_latent_frames} latent frames: ask for 1 "
                         "frame, or load a 384p or 768p video model")
    if context is not None and tuple(context.shape[-2:]) != (height, width):
        raise ValueError(f"context latents are {tuple(context.shape[-2:])}, the video is {(height, width)}")
    units = plan_units(context_frames, num_latent_frames, variant.frame_per_unit)
    if settings.first_frame.num_stages != num_stages:
        raise ValueError(f"settings are for {settings.first_frame.num_stages} stages, the scheduler has {num_stages}")
    if text.batch_size not in (1, batch):
        raise ValueError(f"{text.batch_size} prompts for a batch of {batch} videos")

    factor = 2 ** (num_stages - 1)
    coarse_shape = (batch, LATENT_CHANNELS, num_latent_frames - context_frames, height // factor, width // factor)
    if noise is None:
        full = (batch, LATENT_CHANNELS, num_latent_frames, height, width)
        noise = initial_noise(full, num_stages, generator=generator, device=device)[:, :, context_frames:]
    elif tuple(noise.shape) != coarse_shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {coarse_shape} (coarse noise of the new frames)")
    if block_noise is None:
        block_noise = generator_block_noise(scheduler.gamma, generator, device=device)

    if settings.guidance_schedule is not None:
        settings.guidance_schedule.check_fits(num_latent_frames)
    text.check_fits(num_latent_frames)
    total_steps = sum(settings.for_unit(u.start, variant.frame_per_unit).total_steps for u in units)
    video = context.to(device=device, dtype=torch.float32) if context is not None else None
    done = 0
    for unit in units:
        unit_settings = settings.for_unit(unit.start, variant.frame_per_unit)
        unit_history = build_temporal_history(video, num_stages, variant.frame_per_unit, history)
        report = rebased_callback(callback, offset=done, total_steps=total_steps,
                                  unit_index=unit.index, num_units=len(units), start_frame=unit.start)
        unit_noise = noise[:, :, unit.start - context_frames:unit.stop - context_frames]
        latents = sample_unit(dit, unit_noise, text.at(unit_start_seconds(unit.start)), scheduler, unit_settings,
                              unit_history, block_noise=block_noise, callback=report)
        video = latents if video is None else torch.cat([video, latents], dim=2)
        done += unit_settings.total_steps
    return video


def text_to_video(
    dit: torch.nn.Module,
    text: TextInput,
    *,
    width: int,
    height: int,
    num_frames: int,
    variant: Variant | str = "miniflux-384p",
    steps: PerStage = DEFAULT_STEPS,
    video_steps: PerStage = DEFAULT_VIDEO_STEPS,
    guidance_scale: PerStage = DEFAULT_GUIDANCE,
    video_guidance_scale: PerStage = DEFAULT_VIDEO_GUIDANCE,
    guidance_schedule: Optional[GuidanceSchedule] = None,
    history: HistoryConfig = HistoryConfig(),
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    block_noise: Optional[BlockNoiseSource] = None,
    scheduler: Optional[PyramidFlowScheduler] = None,
    text_encoder=None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Generate a video from text.

    Args:
        text: :class:`TextConditioning`, or prompt string(s) with ``text_encoder`` (suffix and
            default negative prompt added as the reference does).
        width, height: pixels, multiples of 64.
        num_frames: pixel frames, ``1 + 8k`` (1 = an image).
        steps, guidance_scale: first frame, per stage or one for all stages.
        video_steps, video_guidance_scale: later units.
        guidance_schedule: one scale per unit instead of the two scales (e.g. the reference's
            ``use_linear_guidance`` is ``LinearGuidance(guidance_scale)``).
        Other arguments: see :func:`sample_video`.

    Returns:
        ``(B, 16, 1 + k, height / 8, width / 8)`` normalised latents (fp32).
    """
    scheduler = scheduler or PyramidFlowScheduler.from_variant(_variant(variant))
    shape = latent_shape(width, height, num_frames)                              # 1. check inputs
    settings = SamplingSettings.create(scheduler.num_stages, steps, video_steps, guidance_scale, video_guidance_scale,
                                       guidance_schedule)
    text = _resolve_text(text, text_encoder)                                     # 2. encode prompt
    return sample_video(dit, text, context=None, num_latent_frames=shape[2], latent_size=shape[3:],
                        variant=variant, settings=settings, history=history, scheduler=scheduler,
                        generator=generator, noise=noise, block_noise=block_noise, callback=callback)


def _variant(variant: Variant | str) -> Variant:
    return get_variant(variant) if isinstance(variant, str) else variant


def _check_context_size(pixel_hw: tuple[int, int], width: Optional[int], height: Optional[int], what: str) -> None:
    """The video is as large as its image/clip; a different requested size is an error."""
    h, w = pixel_hw
    if (width is not None and width != w) or (height is not None and height != h):
        raise ValueError(f"the {what} is {w}x{h} px but the video was asked to be {width}x{height}; "
                         f"resize the {what} or leave width/height out")
    check_video_size(w, h)


def image_to_video(
    dit: torch.nn.Module,
    text: TextInput,
    *,
    num_frames: int,
    image: Optional[torch.Tensor] = None,
    image_latent: Optional[torch.Tensor] = None,
    vae=None,
    width: Optional[int] = None,
    height: Optional[int] = None,
    variant: Variant | str = "miniflux-384p",
    video_steps: PerStage = DEFAULT_VIDEO_STEPS,
    video_guidance_scale: PerStage = DEFAULT_VIDEO_GUIDANCE,
    guidance_schedule: Optional[GuidanceSchedule] = None,
    history: HistoryConfig = HistoryConfig(),
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    block_noise: Optional[BlockNoiseSource] = None,
    posterior_noise: Optional[torch.Tensor] = None,
    scheduler: Optional[PyramidFlowScheduler] = None,
    text_encoder=None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Generate a video that starts with ``image``.

    Args:
        image: ``(B, 3, H, W)`` pixels in [-1, 1] (see ``image_to_pixels``), encoded with
            ``vae`` (posterior sampled from ``generator`` or ``posterior_noise``); or
        image_latent: ``(B, 16, 1, H/8, W/8)`` its normalised latent.
        width, height: optional; must equal the image's size when given.
        num_frames: pixel frames of the result (``1 + 8k``), the image included.
        Other arguments: see :func:`text_to_video` (the image is the first frame, so only
        the video settings are used).

    Returns:
        ``(B, 16, 1 + k, H/8, W/8)``; frame 0 is the image latent.
    """
    variant = _variant(variant)
    scheduler = scheduler or PyramidFlowScheduler.from_variant(variant)
    if (image is None) == (image_latent is None):                               # 1. check inputs
        raise ValueError("give exactly one of image (pixels) or image_latent")
    if image is not None:
        image = as_video_pixels(image, "image")
        if image.shape[2] != 1:
            raise ValueError(f"image must be one frame, got {image.shape[2]}")
        if vae is None:
            raise ValueError("image pixels need vae= to be encoded (or pass image_latent)")
        pixel_hw = tuple(image.shape[-2:])
    else:
        if image_latent.ndim != 5 or image_latent.shape[1] != LATENT_CHANNELS or image_latent.shape[2] != 1:
            raise ValueError(f"image_latent must be (B, {LATENT_CHANNELS}, 1, h, w), got {tuple(image_latent.shape)}")
        pixel_hw = tuple(s * VAE_SPATIAL_FACTOR for s in image_latent.shape[-2:])
    _check_context_size(pixel_hw, width, height, "image")
    total = latent_frames(num_frames)
    settings = SamplingSettings.video_only(scheduler.num_stages, video_steps, video_guidance_scale, guidance_schedule)
    text = _resolve_text(text, text_encoder)                                     # 2. encode prompt
    if image is not None:                                                        # 3. prepare latents
        image_latent = encode_frames(vae, image, variant, generator=generator, posterior_noise=posterior_noise)
    return sample_video(dit, text, context=image_latent, num_latent_frames=total,
                        latent_size=tuple(image_latent.shape[-2:]), variant=variant, settings=settings,
                        history=history, scheduler=scheduler, generator=generator, noise=noise,
                        block_noise=block_noise, callback=callback)


def continue_video(
    dit: torch.nn.Module,
    text: TextInput,
    *,
    num_frames: int,
    video: Optional[torch.Tensor] = None,
    video_latents: Optional[torch.Tensor] = None,
    vae=None,
    variant: Variant | str = "miniflux-384p",
    video_steps: PerStage = DEFAULT_VIDEO_STEPS,
    video_guidance_scale: PerStage = DEFAULT_VIDEO_GUIDANCE,
    guidance_schedule: Optional[GuidanceSchedule] = None,
    history: HistoryConfig = HistoryConfig(),
    sample_posterior: bool = False,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    block_noise: Optional[BlockNoiseSource] = None,
    scheduler: Optional[PyramidFlowScheduler] = None,
    text_encoder=None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Continue a clip to ``num_frames`` pixel frames in all.

    Args:
        video: ``(B, 3, 1 + 8j, H, W)`` pixels in [-1, 1], encoded with ``vae`` (posterior
            mean unless ``sample_posterior``); or
        video_latents: ``(B, 16, T, h, w)`` its normalised latents (e.g. an earlier output).
        num_frames: pixel frames of the result (``1 + 8k``), longer than the clip.
        Other arguments: see :func:`image_to_video`.

    Returns:
        ``(B, 16, 1 + k, h, w)``; the clip's latents come first, unchanged.
    """
    variant = _variant(variant)
    scheduler = scheduler or PyramidFlowScheduler.from_variant(variant)
    if (video is None) == (video_latents is None):                              # 1. check inputs
        raise ValueError("give exactly one of video (pixels) or video_latents")
    if video is not None:
        video = as_video_pixels(video, "video")
        if vae is None:
            raise ValueError("video pixels need vae= to be encoded (or pass video_latents)")
        given = latent_frames(video.shape[2])
        pixel_hw = tuple(video.shape[-2:])
    else:
        if video_latents.ndim != 5 or video_latents.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"video_latents must be (B, {LATENT_CHANNELS}, T, h, w), got {tuple(video_latents.shape)}")
        given = video_latents.shape[2]
        pixel_hw = tuple(s * VAE_SPATIAL_FACTOR for s in video_latents.shape[-2:])
    _check_context_size(pixel_hw, None, None, "clip")
    total = latent_frames(num_frames)
    if total <= given:
        raise ValueError(f"num_frames={num_frames} ({total} latent frames) does not extend the clip "
                         f"of {given} latent frames; ask for more frames")
    settings = SamplingSettings.video_only(scheduler.num_stages, video_steps, video_guidance_scale, guidance_schedule)
    plan_units(given, total, variant.frame_per_unit)
    text = _resolve_text(text, text_encoder)                                     # 2. encode prompt
    if video is not None:                                                        # 3. prepare latents
        video_latents = encode_frames(vae, video, variant, generator=generator, sample=sample_posterior)
    return sample_video(dit, text, context=video_latents, num_latent_frames=total,
                        latent_size=tuple(video_latents.shape[-2:]), variant=variant, settings=settings,
                        history=history, scheduler=scheduler, generator=generator, noise=noise,
                        block_noise=block_noise, callback=callback)
