"""Validated per-stage settings: steps and guidance of every pyramid stage.

A video has two kinds of temporal units: the first frame (the image) and the video units
after it. Each kind has its own steps and guidance per stage (the reference's
``num_inference_steps`` / ``guidance_scale`` and ``video_num_inference_steps`` /
``video_guidance_scale``); a single number means "the same for every stage".
Everything is checked here, before any model runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

from .guidance import check_guidance_scale
from .timeline import unit_in_video, unit_start_seconds

if TYPE_CHECKING:
    from .schedules import GuidanceSchedule

__all__ = ["SamplingSettings", "UnitSettings", "per_stage"]

PerStage = Union[int, float, Sequence[Union[int, float]]]

# The official app's defaults (the reference's own generate() defaults are 28 steps).
DEFAULT_STEPS = (20, 20, 20)
DEFAULT_VIDEO_STEPS = (10, 10, 10)
DEFAULT_GUIDANCE = 7.0
DEFAULT_VIDEO_GUIDANCE = 5.0


def per_stage(value: PerStage, num_stages: int, name: str) -> tuple:
    """``value`` as a tuple of ``num_stages`` entries (a scalar is repeated)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,) * num_stages
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a number or a list of {num_stages} numbers, got {value!r}") from None
    if len(values) != num_stages:
        raise ValueError(f"{name} has {len(values)} entries {list(values)}; give one per pyramid stage "
                         f"({num_stages}), or a single number for all")
    return values


def _check_steps(values: tuple, name: str) -> tuple[int, ...]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be integers >= 1 per stage, got {list(values)}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class UnitSettings:
    """Steps and guidance scale of every stage of one kind of unit."""

    steps: tuple[int, ...]
    guidance: tuple[float, ...]

    @classmethod
    def create(cls, steps: PerStage, guidance: PerStage, num_stages: int,
               steps_name: str = "steps", guidance_name: str = "guidance_scale") -> "UnitSettings":
        step_values = _check_steps(per_stage(steps, num_stages, steps_name), steps_name)
        scales = tuple(check_guidance_scale(g, guidance_name) for g in per_stage(guidance, num_stages, guidance_name))
        return cls(step_values, scales)

    @property
    def num_stages(self) -> int:
        return len(self.steps)

    @property
    def total_steps(self) -> int:
        return sum(self.steps)


@dataclass(frozen=True)
class SamplingSettings:
    """Settings of the first frame and of the video units.

    With a ``guidance_schedule`` (:mod:`pyramid_core.sampling.schedules`) every unit's guidance
    comes from it, one scale for all of the unit's stages; the steps stay per kind of unit.
    """

    first_frame: UnitSettings
    video: UnitSettings
    guidance_schedule: Optional["GuidanceSchedule"] = None

    @classmethod
    def create(
        cls,
        num_stages: int = 3,
        steps: PerStage = DEFAULT_STEPS,
        video_steps: PerStage = DEFAULT_VIDEO_STEPS,
        guidance_scale: PerStage = DEFAULT_GUIDANCE,
        video_guidance_scale: PerStage = DEFAULT_VIDEO_GUIDANCE,
        guidance_schedule: Optional["GuidanceSchedule"] = None,
    ) -> "SamplingSettings":
        return cls(
            UnitSettings.create(steps, guidance_scale, num_stages, "steps", "guidance_scale"),
            UnitSettings.create(video_steps, video_guidance_scale, num_stages, "video_steps", "video_guidance_scale"),
            guidance_schedule,
        )

    @classmethod
    def video_only(cls, num_stages: int = 3, video_steps: PerStage = DEFAULT_VIDEO_STEPS,
                   video_guidance_scale: PerStage = DEFAULT_VIDEO_GUIDANCE,
                   guidance_schedule: Optional["GuidanceSchedule"] = None) -> "SamplingSettings":
        """Settings of a video whose first frame is given (image-to-video, continuation)."""
        video = UnitSettings.create(video_steps, video_guidance_scale, num_stages, "video_steps", "video_guidance_scale")
        return cls(video, video, guidance_schedule)

    def for_unit(self, start_frame: int, frame_per_unit: int = 1) -> UnitSettings:
        """Settings of the unit that starts at latent frame ``start_frame`` (0: the first frame)."""
        base = self.first_frame if start_frame == 0 else self.video
        if self.guidance_schedule is None:
            return base
        scale = self.guidance_schedule.scale(unit_in_video(start_frame, frame_per_unit), unit_start_seconds(start_frame))
        return UnitSettings(base.steps, (check_guidance_scale(scale, "scheduled guidance"),) * base.num_stages)
