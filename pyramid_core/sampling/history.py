"""The temporal pyramid: what a new unit sees of the video generated before it.

Each unit of a video (after the first frame) is denoised stage by stage; at every stage the
DiT also receives *history clips*: clean latents of earlier frames, downsampled. The
reference (``generate`` / ``generate_i2v``) builds them like this, for a unit with ``u``
earlier units (``frame_per_unit`` latent frames each, the first frame counting as a unit)
and pyramid stage ``k`` of ``S`` (level ``k`` = stage ``k``'s resolution, level ``S-1`` =
full latent size, every level below halves width and height by bilinear downsampling):

* the most recent unit at level ``k``, as its own clip;
* then, walking back one unit at a time, one level lower per unit: the unit before it at
  level ``k-1``, the one before that at ``k-2``, ... each as its own clip, down to level 1;
* everything older, in one clip, at level 0.

So for 3 stages and past frames ``f0 .. f4`` (one frame per unit), oldest first:

==========  ==================================================================
stage 0     ``[f0..f3 @ 1/4]``, ``[f4 @ 1/4]``
stage 1     ``[f0..f3 @ 1/4]``, ``[f4 @ 1/2]``
stage 2     ``[f0..f2 @ 1/4]``, ``[f3 @ 1/2]``, ``[f4 @ full]``
==========  ==================================================================

The clips come oldest (lowest resolution) first, the noisy latent follows them in the DiT
call. Older frames cost a sixteenth of the tokens of a full-resolution frame, but the
reference keeps *all* of them, so time and memory still grow with the video's length.

:class:`HistoryConfig` adds two controls (the defaults reproduce the reference):

* ``recent_units``: how many of the most recent units stay at the current stage's
  resolution, each as its own clip, before the resolution starts dropping (reference: 1);
* ``max_frames``: keep only the last ``max_frames`` latent frames as history (reference:
  no limit). With it the history, hence the DiT token count per step, is bounded however
  long the video gets; the released models were trained with up to 16 (384p) or 31 (768p)
  latent frames in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["HistoryConfig", "TemporalHistory", "build_temporal_history", "latent_pyramid"]


@dataclass(frozen=True)
class HistoryConfig:
    """User controls of the temporal history (defaults = the reference).

    Attributes:
        recent_units: most recent units kept at the stage's own resolution (>= 1).
        max_frames: at most this many past latent frames are used (``None`` = all).
    """

    recent_units: int = 1
    max_frames: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.recent_units, bool) or not isinstance(self.recent_units, int) or self.recent_units < 1:
            raise ValueError(f"recent_units must be an integer >= 1, got {self.recent_units!r}")
        if self.max_frames is not None and (
                isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 1):
            raise ValueError(f"max_frames must be None (no limit) or an integer >= 1, got {self.max_frames!r}")


@dataclass(frozen=True)
class TemporalHistory:
    """History clips of one unit, per pyramid stage.

    Attributes:
        clips: ``clips[k]`` is the tuple of clips for stage ``k``, oldest first, each
            ``(B, C, T_j, H_j, W_j)`` (not doubled for guidance; the stage sampler does that).
    """

    clips: tuple[tuple[torch.Tensor, ...], ...]

    @classmethod
    def empty(cls, num_stages: int) -> "TemporalHistory":
        """No history (the first frame of a video)."""
        return cls(tuple(() for _ in range(num_stages)))

    @property
    def num_stages(self) -> int:
        return len(self.clips)

    def frames(self, stage_index: int) -> int:
        """Latent frames of history at a stage."""
        return sum(clip.shape[2] for clip in self.clips[stage_index])

    def num_tokens(self, stage_index: int, patch_size: int = 2) -> int:
        """DiT image tokens the history adds at a stage (``patch_size`` x ``patch_size`` patches)."""
        return sum(c.shape[2] * (c.shape[3] // patch_size) * (c.shape[4] // patch_size)
                   for c in self.clips[stage_index])


def latent_pyramid(latents: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
    """Clean latents at every stage's resolution, coarsest first.

    Level ``S-1`` is ``latents`` itself; each level below is a x0.5 bilinear downsample of
    the one above (per frame), as the reference's ``get_pyramid_latent``.

    Args:
        latents: ``(B, C, T, H, W)``, H and W divisible by ``2 ** (num_stages - 1)``.

    Returns:
        ``num_stages`` tensors ``(B, C, T, H / 2**(S-1-k), W / 2**(S-1-k))``.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, T, H, W), got shape {tuple(latents.shape)}")
    factor = 2 ** (num_stages - 1)
    if latents.shape[-2] % factor or latents.shape[-1] % factor:
        raise ValueError(f"latent size {tuple(latents.shape[-2:])} cannot be halved {num_stages - 1} times")
    batch, _, frames = latents.shape[:3]
    levels = [latents]
    planes = latents.transpose(1, 2).flatten(0, 1)                           # (B*T, C, H, W)
    for _ in range(num_stages - 1):
        planes = F.interpolate(planes, size=(planes.shape[-2] // 2, planes.shape[-1] // 2), mode="bilinear")
        levels.append(planes.unflatten(0, (batch, frames)).transpose(1, 2))  # (B, C, T, h, w)
    return levels[::-1]


def _stage_clips(
    levels: Sequence[torch.Tensor], stage_index: int, frame_per_unit: int, recent_units: int
) -> tuple[torch.Tensor, ...]:
    """The clips of one stage (see the module docstring), oldest first."""
    end = levels[0].shape[2]
    num_units = -(-end // frame_per_unit)           # the oldest unit may be partial (the first frame)
    clips = []
    level = stage_index
    for unit in range(num_units):
        if unit >= recent_units:
            level -= 1
            if level <= 0:
                clips.append(levels[0][:, :, :end])     # everything older, at the lowest level
                break
        start = max(end - frame_per_unit, 0)
        clips.append(levels[level][:, :, start:end])
        end = start
    return tuple(reversed(clips))


def build_temporal_history(
    past_latents: Optional[torch.Tensor],
    num_stages: int,
    frame_per_unit: int = 1,
    config: HistoryConfig = HistoryConfig(),
) -> TemporalHistory:
    """History of the next unit from the (normalised, full-resolution) latents before it.

    Args:
        past_latents: ``(B, C, T, H, W)`` every latent frame before the new unit (generated
            or encoded), or ``None``/``T = 0`` for none.
        num_stages: pyramid stages of the sampler.
        frame_per_unit: latent frames per unit (1 for the released models).
        config: the user controls; the default reproduces the reference.

    Returns:
        :class:`TemporalHistory` with ``num_stages`` tuples of clips.
    """
    if frame_per_unit < 1:
        raise ValueError(f"frame_per_unit must be >= 1, got {frame_per_unit}")
    if past_latents is None or past_latents.shape[2] == 0:
        return TemporalHistory.empty(num_stages)
    if config.max_frames is not None:
        past_latents = past_latents[:, :, -config.max_frames:]
    levels = latent_pyramid(past_latents, num_stages)
    return TemporalHistory(tuple(_stage_clips(levels, k, frame_per_unit, config.recent_units)
                                 for k in range(num_stages)))
