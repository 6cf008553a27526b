"""Temporal history: what the next autoregressive unit is conditioned on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from comfy_api.latest import io

from ..pyramid_core.sampling import HistoryConfig
from ._runtime import HistoryType

CATEGORY = "PyramidFlow/sampling"
RNG_KEY = "pyramid_rng_state"   # LATENT key: RNG state after a sampler, so the next unit continues it


@dataclass(frozen=True)
class PastVideo:
    """The history socket's value: the clean latents so far (VAE space) and the history controls."""

    latents: torch.Tensor                    # (B, 16, T_past, h, w)
    config: HistoryConfig
    rng_state: Optional[torch.Tensor] = None


class PyramidFlowHistory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowHistory",
            display_name="Pyramid Flow Temporal History",
            category=CATEGORY,
            description="Makes the history the next unit is generated from: generated latents (a sampler's output) or "
                        "encoded frames (VAE Encode). The most recent frames are seen at the stage's resolution, "
                        "older ones at lower resolutions, as the model was trained.",
            inputs=[
                io.Latent.Input("samples", tooltip="The video so far: a sampler's output or VAE Encode of an image/clip."),
                io.Int.Input("recent_units", default=1, min=1, max=64,
                             tooltip="Most recent units kept at the current stage's resolution before older ones "
                                     "drop to lower resolutions. 1 = the reference; more keeps more detail of the "
                                     "past at the cost of speed."),
                io.Int.Input("max_frames", default=0, min=0, max=1024,
                             tooltip="Use only the last this-many latent frames as history (0 = all, the reference). "
                                     "Bounds time and memory per unit for long videos; the released models were "
                                     "trained with 16 (384p) or 31 (768p) latent frames in all."),
            ],
            outputs=[HistoryType.Output(display_name="history")],
        )

    @classmethod
    def execute(cls, samples: dict, recent_units: int, max_frames: int) -> io.NodeOutput:
        latents = samples["samples"]
        if latents.ndim != 5 or "pyramid" in samples:
            raise ValueError("history needs finished video latents (B, 16, T, h, w): connect the output of the last "
                             "stage sampler, a unit/video sampler or VAE Encode, not an intermediate stage")
        config = HistoryConfig(recent_units=recent_units, max_frames=max_frames or None)
        return io.NodeOutput(PastVideo(latents, config, samples.get(RNG_KEY)))
