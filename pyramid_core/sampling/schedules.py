"""Guidance over a video's time: one scale per temporal unit, for all of its stages.

(The prompt can change over time too: :func:`pyramid_core.sampling.encode_prompt_schedule`;
how a unit's time is counted and schedules are written: :mod:`.timeline`.)

* :class:`LinearGuidance` is the reference's ``use_linear_guidance``: unit ``u`` (counted in
  the video, the first frame being unit 0) gets ``max(start - alpha * u, minimum)``, both
  for the first frame and the video units;
* :class:`ConstantGuidance` is one scale for every unit;
* :class:`GuidanceByTime` is the scale in force at the unit's first frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .guidance import check_guidance_scale
from .timeline import TimedLine, check_schedule_fits, in_force, parse_timed_lines

__all__ = ["ConstantGuidance", "GuidanceByTime", "GuidanceSchedule", "LinearGuidance"]


class GuidanceSchedule(Protocol):
    """The guidance scale of a unit, from its index in the video and its start time."""

    def scale(self, unit: int, seconds: float) -> float: ...

    def check_fits(self, num_latent_frames: int) -> None: ...


@dataclass(frozen=True)
class ConstantGuidance:
    """The same scale for the first frame and every video unit."""

    value: float

    def __post_init__(self):
        check_guidance_scale(self.value, "guidance")

    def scale(self, unit: int, seconds: float) -> float:
        return float(self.value)

    def check_fits(self, num_latent_frames: int) -> None:
        return None


@dataclass(frozen=True)
class LinearGuidance:
    """The reference's ``use_linear_guidance``: ``max(start - alpha * unit, minimum)``.

    Its defaults (``alpha=0.5, min_guidance_scale=2.0``) are the reference's; ``start`` is
    its ``guidance_scale``. In image-to-video the first generated unit is unit 1.
    """

    start: float
    alpha: float = 0.5
    minimum: float = 2.0

    def __post_init__(self):
        check_guidance_scale(self.start, "start guidance")
        check_guidance_scale(self.minimum, "minimum guidance")
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha={self.alpha}: the decrease per unit must be 0 or more")

    def scale(self, unit: int, seconds: float) -> float:
        return max(self.start - self.alpha * unit, self.minimum)

    def check_fits(self, num_latent_frames: int) -> None:
        return None


@dataclass(frozen=True)
class GuidanceByTime:
    """The scale in force at each unit's first frame, from ``<seconds>: <scale>`` lines."""

    lines: tuple[TimedLine, ...]

    @classmethod
    def from_text(cls, text: str) -> "GuidanceByTime":
        lines = tuple(parse_timed_lines(text, "guidance schedule"))
        for line in lines:
            try:
                value = float(line.value)
            except ValueError:
                value = line.value                      # not a number: the check below says so
            try:
                check_guidance_scale(value, "guidance")
            except ValueError as err:
                raise ValueError(f"guidance schedule, {line}: {err}") from None
        return cls(lines)

    def scale(self, unit: int, seconds: float) -> float:
        return float(self.lines[in_force(self.lines, seconds)].value)

    def check_fits(self, num_latent_frames: int) -> None:
        check_schedule_fits(self.lines, num_latent_frames, "guidance schedule")
