"""One pyramid stage, the jump between stages, and one temporal unit made of them.

* :func:`denoise_stage` runs the Euler steps of one stage with guidance and history.
* :func:`enter_stage` upsamples a finished stage x2 and re-noises it for the next one
  (:func:`pyramid_core.scheduling.stage_transition` with the scheduler's coefficients).
* :func:`sample_unit` chains them: stage 0 from the coarse noise, then transition and
  denoise for every further stage.

The sampler state (the latent being denoised) stays in fp32 whatever the DiT's dtype; the
DiT receives it as is (it casts its tokens itself), text in its compute dtype and the
timesteps in that dtype too, as the reference passes them.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..noise import block_noise as draw_block_noise
from ..numerics import check_finite
from ..scheduling import PyramidFlowScheduler, stage_transition
from .guidance import TextConditioning, apply_guidance, guidance_enabled
from .history import TemporalHistory
from .progress import StepCallback, StepInfo, rebased_callback
from .settings import UnitSettings

__all__ = [
    "BlockNoiseSource",
    "compute_dtype",
    "denoise_stage",
    "enter_stage",
    "generator_block_noise",
    "sample_unit",
]

# Gives the block noise of one stage transition: called with the upsampled shape
# (B, C, T, H, W), returns a tensor of that shape. Called once per transition, in order.
BlockNoiseSource = Callable[[tuple], torch.Tensor]

_FLOAT_COMPUTE = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model computes in (first parameter of a compute dtype; fp8 storage is skipped)."""
    for parameter in model.parameters():
        if parameter.dtype in _FLOAT_COMPUTE:
            return parameter.dtype
    return torch.float32


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def generator_block_noise(
    gamma: float,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None,
) -> BlockNoiseSource:
    """A :data:`BlockNoiseSource` drawing from ``generator`` (see :func:`pyramid_core.noise.block_noise`)."""

    def source(shape: tuple) -> torch.Tensor:
        return draw_block_noise(shape, gamma, generator=generator, device=device)

    return source


def enter_stage(
    latents: torch.Tensor,
    scheduler: PyramidFlowScheduler,
    stage_index: int,
    *,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Stage transition into ``stage_index`` (> 0): x2 nearest upsample + block-noise re-noise.

    Args:
        latents: ``(B, C, T, H, W)``, the finished previous stage.
        noise: block noise ``(B, C, T, 2H, 2W)`` to use; drawn from ``generator`` when None.

    Returns:
        ``(B, C, T, 2H, 2W)`` at the new stage's (gamma-corrected) start noise level.
    """
    alpha, beta = scheduler.renoise_coefficients(stage_index)
    return stage_transition(latents, alpha, beta, scheduler.gamma, generator=generator, noise=noise)


def denoise_stage(
    dit: torch.nn.Module,
    latents: torch.Tensor,
    text: TextConditioning,
    scheduler: PyramidFlowScheduler,
    stage_index: int,
    num_steps: int,
    guidance_scale: float,
    history: Sequence[torch.Tensor] = (),
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """The Euler steps of one pyramid stage, from its start to its end noise level.

    Args:
        dit: a pyramid DiT (``PyramidFluxTransformer`` or ``PyramidDiffusionMMDiT``).
        latents: ``(B, C, T, H, W)`` at this stage's resolution and start noise level
            (coarse noise for stage 0, the output of :func:`enter_stage` otherwise).
        text: prompt embeddings; guidance batch ``[negative, positive]`` when ``guidance_scale > 0``.
        scheduler: its tables define the stage; its step state is reset here.
        stage_index: pyramid stage (0 = coarsest).
        num_steps: Euler steps in this stage (>= 1).
        guidance_scale: classifier-free guidance scale (>= 0; 0 = positive prompt only).
        history: clean history clips ``(B, C, T_j, H_j, W_j)`` of this stage, oldest first
            (``TemporalHistory.clips[stage_index]``).
        callback: called after every step with a :class:`StepInfo`; raise in it to stop.

    Returns:
        ``(B, C, T, H, W)`` fp32 latents at the stage's end noise level. Raises
        :class:`pyramid_core.numerics.NonFiniteOutputError` at the first step whose prediction
        holds NaN or inf (an fp16 overflow), naming the dtype to use instead.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, T, H, W), got shape {tuple(latents.shape)}")
    scheduler.set_timesteps(num_steps, stage_index)
    dtype, device = compute_dtype(dit), latents.device
    latents = latents.to(torch.float32)
    cfg = guidance_enabled(guidance_scale)
    copies = 2 if cfg else 1
    text_inputs = text.model_inputs(latents.shape[0], guidance_scale, dtype, device)
    clips = [torch.cat([clip.to(device=device, dtype=torch.float32)] * copies) for clip in history]
    for index, t in enumerate(scheduler.timesteps):
        model_input = torch.cat([latents] * copies)                              # (copies*B, C, T, H, W)
        timestep = t.to(device).expand(model_input.shape[0]).to(dtype)           # (copies*B,)
        with torch.no_grad():
            prediction = dit(sample=[clips + [model_input]], timestep_ratio=timestep, **text_inputs)[0]
        velocity = apply_guidance(prediction, guidance_scale)                    # (B, C, T, H, W) fp32
        # one host sync per step: an fp16 overflow stops here, not as a black video at the end
        check_finite(velocity, "the DiT", dtype, f"pyramid stage {stage_index + 1}, step {index + 1}")
        latents = scheduler.step(velocity, timestep, latents)
        if callback is not None:
            callback(StepInfo(step=index + 1, total_steps=num_steps, latents=latents, stage_index=stage_index,
                              stage_step=index + 1, stage_steps=num_steps))
    return latents


def sample_unit(
    dit: torch.nn.Module,
    noise: torch.Tensor,
    text: TextConditioning,
    scheduler: PyramidFlowScheduler,
    settings: UnitSettings,
    history: Optional[TemporalHistory] = None,
    *,
    block_noise: Optional[BlockNoiseSource] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Generate one temporal unit through every pyramid stage.

    Args:
        noise: ``(B, C, T_unit, h, w)`` coarse (stage-0 size) noise of the unit.
        settings: steps and guidance per stage.
        history: the unit's :class:`TemporalHistory`; None for the first frame.
        block_noise: where transition noise comes from; default: drawn from ``generator``.
        callback: step reports counted over the whole unit.

    Returns:
        ``(B, C, T_unit, h * 2**(S-1), w * 2**(S-1))`` fp32 clean latents.
    """
    num_stages = scheduler.num_stages
    if settings.num_stages != num_stages:
        raise ValueError(f"settings are for {settings.num_stages} stages, the scheduler has {num_stages}")
    history = history or TemporalHistory.empty(num_stages)
    if history.num_stages != num_stages:
        raise ValueError(f"history has {history.num_stages} stages, the scheduler has {num_stages}")
    if block_noise is None:
        block_noise = generator_block_noise(scheduler.gamma, generator, device=noise.device)
    latents = noise.to(torch.float32)
    done = 0
    for stage in range(num_stages):
        if stage > 0:
            shape = (*latents.shape[:3], latents.shape[3] * 2, latents.shape[4] * 2)
            latents = enter_stage(latents, scheduler, stage, noise=block_noise(shape))
        report = rebased_callback(callback, offset=done, total_steps=settings.total_steps)
        latents = denoise_stage(dit, latents, text, scheduler, stage, settings.steps[stage],
                                settings.guidance[stage], history.clips[stage], callback=report)
        done += settings.steps[stage]
    return latents
