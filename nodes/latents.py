"""Latent helpers: the empty video latent that a pyramid sampler fills."""

from __future__ import annotations

import torch
import comfy.model_management
from comfy_api.latest import io

from ..pyramid_core.sizes import FRAMES_PER_SECOND, MAX_SIDE, frames_for_seconds, latent_shape, pixel_multiple
from ..pyramid_core.variants import VARIANTS
from ._runtime import check_memory_for

CATEGORY = "PyramidFlow/latent"
# The 384p model's size and the reference README's 5 s (temp=16, 121 frames).
DEFAULT_MODEL = VARIANTS["miniflux-384p"]


class PyramidFlowEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        multiple = pixel_multiple()
        return io.Schema(
            node_id="PyramidFlowEmptyLatent",
            display_name="Pyramid Flow Empty Latent",
            category=CATEGORY,
            description="An all-zero video latent of the size the pyramid sampler will generate.",
            inputs=[
                io.Int.Input("width", default=DEFAULT_MODEL.width, min=multiple, max=MAX_SIDE, step=multiple,
                             tooltip=f"Video width in pixels; a multiple of {multiple} so that every pyramid stage can halve it. 640 for 384p models, 1280 for 768p."),
                io.Int.Input("height", default=DEFAULT_MODEL.height, min=multiple, max=MAX_SIDE, step=multiple,
                             tooltip=f"Video height in pixels; a multiple of {multiple}. 384 for 384p models, 768 for 768p."),
                io.Int.Input("length", default=frames_for_seconds(5), min=1, max=8193, step=8,
                             tooltip=f"Frames, 1 + 8k (the causal VAE keeps the first frame alone and packs 8 frames per latent frame). 121 frames = 5 s at {FRAMES_PER_SECOND} fps."),
                io.Float.Input("seconds", default=0.0, min=0.0, max=300.0, step=1 / 3,
                               tooltip=f"If above 0, the length in seconds at {FRAMES_PER_SECOND} fps instead of frames (rounded to the nearest 1 + 8k frames)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Videos generated side by side."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, width: int, height: int, length: int, seconds: float, batch_size: int) -> io.NodeOutput:
        frames = length if seconds == 0 else frames_for_seconds(seconds)   # NaN and negatives are refused there
        shape = latent_shape(width, height, frames, batch_size)
        check_memory_for(shape)
        samples = torch.zeros(shape, device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples})
