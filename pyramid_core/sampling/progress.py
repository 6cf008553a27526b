"""Per-step progress reports and the interrupt protocol of the samplers.

Every sampler in :mod:`pyramid_core.sampling` takes an optional ``callback``. It is called
once after every Euler step with a :class:`StepInfo` (a counter plus the current latent, for
previews) and returns nothing.

Interrupting: the callback raises. The exception propagates out of the sampler unchanged
(nothing catches it, no partial result is returned), which is exactly what ComfyUI's
``comfy.model_management.throw_exception_if_processing_interrupted()`` needs: call it inside
the callback. :class:`SamplingInterrupted` is a ready-made exception for other front ends.

Counters are local to the call that reports them: :func:`denoise_stage` counts the steps of
its stage; the unit sampler and the pipelines rebase those reports with
:func:`rebased_callback` so the callback of a whole video sees one running count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["SamplingInterrupted", "StepCallback", "StepInfo", "rebased_callback"]


class SamplingInterrupted(RuntimeError):
    """Raise it from a step callback to stop sampling."""


@dataclass(frozen=True)
class StepInfo:
    """One finished Euler step.

    Attributes:
        step: steps done so far in the reporting call (1-based: 1 after the first step).
        total_steps: steps the reporting call will do in all.
        latents: the latent after this step, ``(B, C, T, H, W)`` at the stage's resolution.
            Do not modify it; clone it to keep it.
        stage_index: pyramid stage of this step (0 = coarsest).
        stage_step: 1-based step inside the stage; ``stage_steps`` steps in the stage.
        unit_index: temporal unit being generated, counted in the call (0 = its first unit),
            ``num_units`` in all.
        start_frame: latent frame where that unit starts in the video (0 = the first frame,
            which has its own latent constants).
    """

    step: int
    total_steps: int
    latents: torch.Tensor
    stage_index: int = 0
    stage_step: int = 1
    stage_steps: int = 1
    unit_index: int = 0
    num_units: int = 1
    start_frame: int = 0


StepCallback = Callable[[StepInfo], None]


def rebased_callback(
    callback: Optional[StepCallback],
    *,
    offset: int,
    total_steps: int,
    unit_index: Optional[int] = None,
    num_units: Optional[int] = None,
    start_frame: Optional[int] = None,
) -> Optional[StepCallback]:
    """Wrap ``callback`` so reports of an inner call count from ``offset`` out of ``total_steps``.

    ``unit_index``/``num_units``/``start_frame``, when given, overwrite those fields. Returns
    ``None`` for ``None`` so callers can pass the result straight on.
    """
    if callback is None:
        return None
    fields = {name: value for name, value in (("unit_index", unit_index), ("num_units", num_units),
                                              ("start_frame", start_frame)) if value is not None}

    def report(info: StepInfo) -> None:
        callback(dataclasses.replace(info, step=offset + info.step, total_steps=total_steps, **fields))

    return report
