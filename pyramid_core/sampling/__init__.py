"""Pyramid sampling: building blocks and the pipelines composed of them.

Blocks (each usable alone, plain tensors in and out):

* :func:`initial_noise` -- coarse noise of a video (from :mod:`pyramid_core.noise`);
* :func:`denoise_stage` -- Euler steps of one stage with guidance and history;
* :func:`enter_stage` -- stage transition (x2 upsample + block-noise re-noise);
* :func:`build_temporal_history` -- the temporal pyramid of past latents for a new unit;
* :func:`sample_unit` -- one temporal unit through all stages.

Pipelines: :func:`text_to_video`, :func:`image_to_video`, :func:`continue_video`, all of
them :func:`sample_video` with a different context.
"""

from ..noise import initial_noise
from .conditioning import as_video_pixels, encode_frames, image_to_pixels
from .guidance import (TextConditioning, apply_guidance, check_guidance_scale, encode_prompt_schedule, encode_text,
                       guidance_enabled)
from .history import HistoryConfig, TemporalHistory, build_temporal_history, latent_pyramid
from .pipelines import UnitPlan, continue_video, image_to_video, plan_units, sample_video, text_to_video
from .progress import SamplingInterrupted, StepCallback, StepInfo, rebased_callback
from .schedules import ConstantGuidance, GuidanceByTime, GuidanceSchedule, LinearGuidance
from .settings import SamplingSettings, UnitSettings
from .stages import BlockNoiseSource, compute_dtype, denoise_stage, enter_stage, generator_block_noise, sample_unit

__all__ = [
    "BlockNoiseSource",
    "ConstantGuidance",
    "GuidanceByTime",
    "GuidanceSchedule",
    "LinearGuidance",
    "HistoryConfig",
    "SamplingInterrupted",
    "SamplingSettings",
    "StepCallback",
    "StepInfo",
    "TemporalHistory",
    "TextConditioning",
    "UnitPlan",
    "UnitSettings",
    "apply_guidance",
    "as_video_pixels",
    "build_temporal_history",
    "check_guidance_scale",
    "compute_dtype",
    "continue_video",
    "denoise_stage",
    "encode_frames",
    "encode_prompt_schedule",
    "encode_text",
    "enter_stage",
    "generator_block_noise",
    "guidance_enabled",
    "image_to_pixels",
    "image_to_video",
    "initial_noise",
    "latent_pyramid",
    "plan_units",
    "rebased_callback",
    "sample_unit",
    "sample_video",
    "text_to_video",
]
