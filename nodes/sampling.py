"""Samplers: one pyramid stage, the jump between stages, one temporal unit, a whole video.

Graphs can be as explicit as they like and still give the all-in-one sampler's video:

    Empty Latent -> Stage Sampler -> Stage Transition -> Stage Sampler -> Stage Transition -> Stage Sampler
                 (the first unit; its output is the video so far)
    -> Temporal History -> Unit Sampler -> Temporal History -> Unit Sampler ...   (the later units)

The Empty Latent gives the size and length of the whole video: every unit takes its slice
of the coarse noise drawn for the whole video from the seed, and the stage transitions
continue one random stream (carried in the LATENT between the nodes), exactly as
``pyramid_core.sampling.sample_video`` draws them, so the same seed gives the same video.
Between stages the LATENT carries the state of the unit under a ``"pyramid"`` key; a
finished unit is a plain LATENT (VAE latents of the video so far).
"""

from __future__ import annotations

from typing import Optional

import torch
import comfy.model_management
from comfy_api.latest import io

from ..pyramid_core.latents import denormalize_latents, normalize_latents
from ..pyramid_core.sampling import (
    GuidanceSchedule,
    HistoryConfig,
    SamplingSettings,
    TextConditioning,
    UnitSettings,
    build_temporal_history,
    denoise_stage,
    enter_stage,
    generator_block_noise,
    initial_noise,
    plan_units,
    sample_unit,
    sample_video,
)
from ..pyramid_core.sampling.timeline import unit_start_seconds
from ..pyramid_core.scheduling import PyramidFlowScheduler
from ..pyramid_core.sizes import check_video_size
from ..pyramid_core.variants import FIRST_FRAME_STEPS, VAE_SPATIAL_FACTOR, VARIANTS, VIDEO_GUIDANCE, VIDEO_STEPS, Variant
from ._runtime import (ConditioningType, DiTType, GuidanceScheduleType, HistoryType, check_memory_for,
                       execution_device, model_on_device, step_callback)
from .history import RNG_KEY, PastVideo

CATEGORY = "PyramidFlow/sampling"
# Defaults are the reference's settings (pyramid_core.variants cites them) for the 384p model,
# the size the Empty Latent starts at.
DEFAULT_MODEL = VARIANTS["miniflux-384p"]
STATE_KEY = "pyramid"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


# --------------------------------------------------------------------------------------
# small adapters (no model math: normalisation and noise come from pyramid_core)
# --------------------------------------------------------------------------------------

def _generator(seed: int, state: Optional[torch.Tensor] = None) -> torch.Generator:
    # Noise is drawn on the CPU (as core ComfyUI does), so a seed gives the same video on every device.
    generator = torch.Generator("cpu").manual_seed(seed)
    if state is not None:
        generator.set_state(state)
    return generator


def _output_latent(samples: torch.Tensor, **extra) -> dict:
    return {"samples": samples.to(comfy.model_management.intermediate_device()), **extra}


def _video_latent(latent: dict) -> torch.Tensor:
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(f"expected a video latent (B, 16, T, h, w), got shape {tuple(samples.shape)}: "
                         "use the Pyramid Flow Empty Latent")
    check_video_size(samples.shape[-1] * VAE_SPATIAL_FACTOR, samples.shape[-2] * VAE_SPATIAL_FACTOR)
    return samples


def _target_latent(latent: dict, variant: Variant) -> torch.Tensor:
    """The Empty Latent of the video to generate, after checking that the DiT makes that many
    frames and that the sampler's latents and noise for it fit in memory."""
    samples = _video_latent(latent)
    if variant.image_only and samples.shape[2] > 1:
        raise ValueError(f"the DiT is {variant.name}, which makes single images: set the Empty Latent's length "
                         f"to 1 (it asks for {samples.shape[2]} latent frames), or load a 384p or 768p video model")
    check_memory_for(tuple(samples.shape), sampler=True)
    return samples


def _start_unit(dit, target: torch.Tensor, history: Optional[PastVideo], seed: int) -> dict:
    """Everything a new unit starts from: frames, coarse noise, history clips, transition RNG."""
    variant: Variant = dit.variant
    num_stages = variant.num_stages
    batch, _, total, height, width = target.shape
    past = history.latents if history is not None else None
    start = past.shape[2] if past is not None else 0
    if past is not None and (past.shape[0] != batch or tuple(past.shape[-2:]) != (height, width)):
        raise ValueError(f"the history is {tuple(past.shape)} but the video latent is {tuple(target.shape)}: "
                         "same batch and size needed")
    if start >= total:
        raise ValueError(f"the video is complete: the empty latent has {total} latent frames and the history "
                         f"already {start}; make the Empty Latent longer to add units")
    stop = plan_units(start, total, variant.frame_per_unit)[0].stop  # the library's unit layout
    generator = _generator(seed)
    noise = initial_noise(tuple(target.shape), num_stages, generator=generator)[:, :, start:stop]
    if history is not None and history.rng_state is not None:
        generator = _generator(seed, history.rng_state)    # continue the stream of the unit before
    config = history.config if history is not None else HistoryConfig()
    past_model = normalize_latents(past.float(), variant) if past is not None else None
    return dict(noise=noise, start=start, generator=generator, past=past,
                clips=build_temporal_history(past_model, num_stages, variant.frame_per_unit, config))


def _unit_text(conditioning: TextConditioning, start: int, total: int) -> TextConditioning:
    """The prompt in force at the first frame of the unit starting at latent frame ``start``, after
    checking that a prompt schedule fits a video of ``total`` latent frames."""
    conditioning.check_fits(total)
    return conditioning.at(unit_start_seconds(start))


def _finish_unit(latents: torch.Tensor, variant: Variant, start: int, past: Optional[torch.Tensor],
                 generator: torch.Generator) -> dict:
    unit = denormalize_latents(latents.float(), variant, start).to(comfy.model_management.intermediate_device())
    video = unit if past is None else torch.cat([past.to(unit), unit], dim=2)
    return _output_latent(video, **{RNG_KEY: generator.get_state()})


def _common_inputs() -> list:
    return [
        DiTType.Input("dit", tooltip="The Pyramid Flow DiT."),
        ConditioningType.Input("conditioning", tooltip="Prompt and negative prompt from Pyramid Flow Text Encode."),
    ]


def _guidance_schedule_input():
    return GuidanceScheduleType.Input(
        "guidance_schedule", optional=True,
        tooltip="Guidance that changes over the video (Pyramid Flow Guidance Schedule); it replaces the guidance "
                "scales above, one scale per unit.")


def _seed_input(tooltip: str):
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True, tooltip=tooltip)


def _steps_inputs(prefix: str, defaults: tuple[int, ...], what: str) -> list:
    return [io.Int.Input(f"{prefix}stage{k}", default=defaults[k - 1], min=1, max=1000,
                         tooltip=f"Euler steps of pyramid stage {k} ({['1/4', '1/2', 'full'][k - 1]} resolution) "
                                 f"of {what}.")
            for k in (1, 2, 3)]


# --------------------------------------------------------------------------------------
# nodes
# --------------------------------------------------------------------------------------

class PyramidFlowStageSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowStageSampler",
            display_name="Pyramid Flow Stage Sampler",
            category=CATEGORY,
            description="Denoises one pyramid stage of one unit. Chain three of them with two Stage Transitions; "
                        "the first starts from the Empty Latent (and a history for later units), the last "
                        "outputs the video so far.",
            inputs=[
                *_common_inputs(),
                io.Latent.Input("latent", tooltip="The Empty Latent (whole video) for the first stage, the output of "
                                                  "a Stage Transition for the next ones."),
                io.Int.Input("steps", default=FIRST_FRAME_STEPS[0], min=1, max=1000,
                             tooltip="Euler steps of this stage (the official app: 20 per stage for the first "
                                     "frame, 10 for video units)."),
                io.Float.Input("guidance_scale", default=DEFAULT_MODEL.guidance_scale, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of this stage: 7 for the first frame, 4-5 for video "
                                       "units; 0 = positive prompt only (half the work)."),
                _seed_input("Seed of the unit's coarse noise (first stage only; later stages continue its random "
                            "stream through the transitions). The same seed as the Video Sampler gives the same video."),
                HistoryType.Input("history", optional=True,
                                  tooltip="The video so far, for units after the first frame (first stage only)."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, dit, conditioning, latent: dict, steps: int, guidance_scale: float, seed: int,
                history: Optional[PastVideo] = None) -> io.NodeOutput:
        variant: Variant = dit.variant
        state = latent.get(STATE_KEY)
        if state is None:                                   # first stage of a new unit
            target = _target_latent(latent, variant)
            unit = _start_unit(dit, target, history, seed)
            stage, samples = 0, unit.pop("noise")
            state = dict(variant=variant.name, start=unit["start"], past=unit["past"], clips=unit["clips"],
                         total=target.shape[2])
            rng = unit["generator"].get_state()
        else:
            if state["done"]:
                raise ValueError(f"stage {state['stage'] + 1} is already denoised: put a Stage Transition between "
                                 "two Stage Samplers")
            if state["variant"] != variant.name:
                raise ValueError(f"this unit was started with {state['variant']}, not {variant.name}")
            stage, samples, rng = state["stage"], latent["samples"], state["rng"]
        callback = step_callback(steps, dit, state["start"])
        scheduler = PyramidFlowScheduler.from_variant(variant)
        with model_on_device(dit) as model:
            text = _unit_text(conditioning, state["start"], state["total"])
            result = denoise_stage(model, samples.to(execution_device(dit)), text, scheduler, stage, steps,
                                   guidance_scale, state["clips"].clips[stage], callback=callback)
        if stage == variant.num_stages - 1:
            return io.NodeOutput(_finish_unit(result, variant, state["start"], state["past"], _generator(0, rng)))
        return io.NodeOutput(_output_latent(result, **{STATE_KEY: dict(state, stage=stage, done=True, rng=rng)}))


class PyramidFlowStageTransition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowStageTransition",
            display_name="Pyramid Flow Stage Transition",
            category=CATEGORY,
            description="Upsamples a denoised stage x2 and re-noises it with block-correlated noise for the next stage.",
            inputs=[
                io.Latent.Input("latent", tooltip="The output of a Stage Sampler (not of the last stage)."),
                io.Combo.Input("noise", options=["continue", "seed"], default="continue",
                               tooltip="continue: the random stream started by the first Stage Sampler (the same "
                                       "video as the Video Sampler). seed: fresh noise from the seed below."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Seed of the re-noise when noise is 'seed'."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, latent: dict, noise: str, seed: int) -> io.NodeOutput:
        state = latent.get(STATE_KEY)
        if state is None or not state["done"]:
            raise ValueError("a Stage Transition takes the output of a Stage Sampler")
        from ..pyramid_core.variants import get_variant

        variant = get_variant(state["variant"])
        stage = state["stage"] + 1
        if stage >= variant.num_stages:
            raise ValueError("the last stage is done: there is no stage to enter")
        scheduler = PyramidFlowScheduler.from_variant(variant)
        generator = _generator(seed, state["rng"] if noise == "continue" else None)
        samples = latent["samples"]
        shape = (*samples.shape[:3], samples.shape[3] * 2, samples.shape[4] * 2)
        block = generator_block_noise(scheduler.gamma, generator, device=samples.device)(shape)
        entered = enter_stage(samples, scheduler, stage, noise=block)
        return io.NodeOutput(_output_latent(entered, **{STATE_KEY: dict(state, stage=stage, done=False,
                                                                          rng=generator.get_state())}))


class PyramidFlowUnitSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowUnitSampler",
            display_name="Pyramid Flow Unit Sampler",
            category=CATEGORY,
            description="Generates the next temporal unit (the first frame, or the next latent frame) through all "
                        "pyramid stages, conditioned on the history; outputs the video so far.",
            inputs=[
                *_common_inputs(),
                io.Latent.Input("latent", tooltip="The Empty Latent of the whole video (size, length and batch)."),
                *_steps_inputs("steps_", VIDEO_STEPS, "this unit"),
                io.Float.Input("guidance_scale", default=VIDEO_GUIDANCE, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance: 7 for the first frame, 4-5 for video units."),
                _seed_input("Seed of the coarse noise of the whole video (this unit takes its slice); use the seed of "
                            "the first unit to get the Video Sampler's video."),
                HistoryType.Input("history", optional=True,
                                  tooltip="The video so far; without it this unit is the first frame."),
                _guidance_schedule_input(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, dit, conditioning, latent: dict, steps_stage1: int, steps_stage2: int, steps_stage3: int,
                guidance_scale: float, seed: int, history: Optional[PastVideo] = None,
                guidance_schedule: Optional[GuidanceSchedule] = None) -> io.NodeOutput:
        variant: Variant = dit.variant
        own = UnitSettings.create((steps_stage1, steps_stage2, steps_stage3), guidance_scale, variant.num_stages)
        target = _target_latent(latent, variant)
        unit = _start_unit(dit, target, history, seed)
        if guidance_schedule is not None:
            guidance_schedule.check_fits(target.shape[2])
        settings = SamplingSettings(own, own, guidance_schedule).for_unit(unit["start"], variant.frame_per_unit)
        text = _unit_text(conditioning, unit["start"], target.shape[2])
        callback = step_callback(settings.total_steps, dit, unit["start"])
        scheduler = PyramidFlowScheduler.from_variant(variant)
        device = execution_device(dit)
        with model_on_device(dit) as model:
            result = sample_unit(model, unit["noise"].to(device), text, scheduler, settings, unit["clips"],
                                 block_noise=generator_block_noise(scheduler.gamma, unit["generator"], device=device),
                                 callback=callback)
        return io.NodeOutput(_finish_unit(result, variant, unit["start"], unit["past"], unit["generator"]))


class PyramidFlowSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowSampler",
            display_name="Pyramid Flow Video Sampler",
            category=CATEGORY,
            description="Generates a whole video: text-to-video from the Empty Latent, image-to-video from an encoded "
                        "image, or continuation of an encoded clip (connect it to 'start').",
            inputs=[
                *_common_inputs(),
                io.Latent.Input("latent", tooltip="The Empty Latent: size, length (start frames included) and batch."),
                *_steps_inputs("first_frame_steps_", FIRST_FRAME_STEPS, "the first frame (text-to-video only)"),
                *_steps_inputs("video_steps_", VIDEO_STEPS, "every later unit"),
                io.Float.Input("guidance_scale", default=DEFAULT_MODEL.guidance_scale, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the first frame (text-to-video only); the "
                                       "reference README: 7 at 384p, 7-9 at 768p, 9 for the 1024p image model."),
                io.Float.Input("video_guidance_scale", default=VIDEO_GUIDANCE, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the video units; lower (4) for more motion."),
                _seed_input("Seed of the coarse noise and of every stage transition."),
                io.Int.Input("history_recent_units", default=1, min=1, max=64,
                             tooltip="Units seen at the current stage's resolution before older ones drop to lower "
                                     "resolutions (1 = the reference)."),
                io.Int.Input("history_max_frames", default=0, min=0, max=1024,
                             tooltip="Condition on at most the last this-many latent frames (0 = all, the reference)."),
                io.Latent.Input("start", optional=True,
                                tooltip="VAE Encode of an image (image-to-video) or of a clip (continuation): the video "
                                        "starts with these frames."),
                _guidance_schedule_input(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, dit, conditioning, latent: dict, first_frame_steps_stage1: int, first_frame_steps_stage2: int,
                first_frame_steps_stage3: int, video_steps_stage1: int, video_steps_stage2: int,
                video_steps_stage3: int, guidance_scale: float, video_guidance_scale: float, seed: int,
                history_recent_units: int, history_max_frames: int, start: Optional[dict] = None,
                guidance_schedule: Optional[GuidanceSchedule] = None) -> io.NodeOutput:
        variant: Variant = dit.variant
        target = _target_latent(latent, variant)
        settings = SamplingSettings.create(
            variant.num_stages,
            (first_frame_steps_stage1, first_frame_steps_stage2, first_frame_steps_stage3),
            (video_steps_stage1, video_steps_stage2, video_steps_stage3), guidance_scale, video_guidance_scale,
            guidance_schedule)
        history = HistoryConfig(recent_units=history_recent_units, max_frames=history_max_frames or None)
        context = _video_latent(start) if start is not None else None
        if context is not None and (context.shape[0] != target.shape[0] or context.shape[-2:] != target.shape[-2:]):
            raise ValueError(f"the start latent is {tuple(context.shape)} but the Empty Latent is "
                             f"{tuple(target.shape)}: give them the same width, height and batch")
        units = plan_units(0 if context is None else context.shape[2], target.shape[2], variant.frame_per_unit)
        callback = step_callback(sum(settings.for_unit(u.start, variant.frame_per_unit).total_steps
                                     for u in units) or 1, dit)
        # The stream of sample_video (coarse noise of the whole video, then every transition), except
        # that a start made by our samplers continues their stream: a first frame from Stage Samplers
        # finished here is the video this sampler makes alone from the same seed.
        generator = _generator(seed)
        context_frames = 0 if context is None else context.shape[2]
        noise = initial_noise(tuple(target.shape), variant.num_stages, generator=generator)[:, :, context_frames:]
        if start is not None and start.get(RNG_KEY) is not None:
            generator = _generator(seed, start[RNG_KEY])
        device = execution_device(dit)
        scheduler = PyramidFlowScheduler.from_variant(variant)
        with model_on_device(dit) as model:
            video = sample_video(
                model, conditioning,
                context=None if context is None else normalize_latents(context.float(), variant).to(device),
                num_latent_frames=target.shape[2], latent_size=tuple(target.shape[-2:]), variant=variant,
                settings=settings, history=history, scheduler=scheduler, noise=noise.to(device),
                block_noise=generator_block_noise(scheduler.gamma, generator, device=device), callback=callback)
        samples = denormalize_latents(video.float(), variant)
        if context is not None:    # keep the given frames bit for bit
            samples[:, :, :context.shape[2]] = context.to(samples)
        return io.NodeOutput(_output_latent(samples, **{RNG_KEY: generator.get_state()}))
