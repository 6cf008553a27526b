"""VAE encode/decode between IMAGE batches (frames) and LATENT video latents.

LATENTs of this pack hold the causal VAE's own latents ``(B, 16, 1 + k, H/8, W/8)``, as
core LATENTs hold their VAE's. The samplers apply the DiT variant's normalisation (image
constants for latent frame 0, video constants after it) on the way in and undo it on the
way out, the way core samplers apply a model's latent format.
"""

from __future__ import annotations

import torch
import comfy.model_management
from comfy_api.latest import io

from ..pyramid_core.models.vae.budget import decode_memory_required, encode_memory_required
from ..pyramid_core.models.vae.model import AUTO
from ..pyramid_core.sampling import image_to_pixels
from ..pyramid_core.sizes import latent_frames
from ..pyramid_core.variants import VAE_SPATIAL_FACTOR
from ._runtime import VAEType, execution_device, model_on_device, piece_callback

CATEGORY = "PyramidFlow/vae"


def _check_frames(images: torch.Tensor) -> None:
    latent_frames(images.shape[0])  # 1 + 8k frames, or a clear error
    height, width = images.shape[1:3]
    if height % VAE_SPATIAL_FACTOR or width % VAE_SPATIAL_FACTOR:
        raise ValueError(f"frames are {width}x{height} px: the VAE needs multiples of {VAE_SPATIAL_FACTOR} "
                         "(and the samplers multiples of 64); resize them first")


class PyramidFlowVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVAEEncode",
            display_name="Pyramid Flow VAE Encode",
            category=CATEGORY,
            description="Encodes an image or a clip (IMAGE batch of 1 + 8k frames) into one video latent, "
                        "the start of image-to-video or video continuation.",
            inputs=[
                VAEType.Input("vae", tooltip="The causal video VAE."),
                io.Image.Input("images", tooltip="One image, or the frames of one clip (1 + 8k frames, e.g. 1, 9, 17); "
                                                 "width and height multiples of 64 for the samplers."),
                io.Boolean.Input("sample_posterior", default=False,
                                 tooltip="Draw a sample of the VAE posterior (the reference does for image-to-video) "
                                         "instead of taking its mean."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the posterior sample; unused with the mean."),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=64,
                             tooltip="0 = auto: whole frames when they fit the free memory, else the largest tiles "
                                     "that do (smaller ones after an out-of-memory error). Or encode in overlapping "
                                     "tiles of this many pixels; a size above the frame's encodes whole frames."),
                io.Int.Input("chunk_size", default=8, min=0, max=1024, step=8, optional=True,
                             tooltip="Encode the clip this many frames at a time (a multiple of 8) after its first "
                                     "9, to save memory and to stop soon on Cancel; 0 = all frames at once. "
                                     "The latents agree to float rounding."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, vae, images: torch.Tensor, sample_posterior: bool, seed: int, tile_size: int,
                chunk_size: int = 8) -> io.NodeOutput:
        _check_frames(images)
        if chunk_size % 8:
            raise ValueError(f"chunk_size={chunk_size}: use a multiple of 8 frames (or 0 for all at once)")
        pixels = image_to_pixels(images).transpose(0, 1)[None]                   # (1, 3, F, H, W) in [-1, 1]
        tiles = tile_size or AUTO
        needed = 0 if tiles != AUTO else encode_memory_required(vae.patcher.model.diffusion_model, pixels.shape,
                                                                chunk_size or None, execution_device(vae))
        with model_on_device(vae, memory_required=needed) as model:
            dtype = next(model.parameters()).dtype
            posterior = model.encode(pixels.to(execution_device(vae), dtype), chunk_size=chunk_size or None,
                                     tile_size=tiles, progress=piece_callback())
            generator = torch.Generator("cpu").manual_seed(seed)
            latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        samples = latents.to(comfy.model_management.intermediate_device(), torch.float32)
        return io.NodeOutput({"samples": samples})


class PyramidFlowVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVAEDecode",
            display_name="Pyramid Flow VAE Decode",
            category=CATEGORY,
            description="Decodes video latents into frames (IMAGE batch: all frames of video 1, then of video 2, ...).",
            inputs=[
                VAEType.Input("vae", tooltip="The causal video VAE."),
                io.Latent.Input("samples", tooltip="Video latents from a Pyramid Flow sampler or VAE Encode."),
                io.Int.Input("chunk_size", default=1, min=0, max=64,
                             tooltip="Latent frames decoded at a time (each is 8 video frames); 1 uses the least "
                                     "memory, as the reference; 0 decodes all frames at once."),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=64,
                             tooltip="0 = auto: whole frames when they fit the free memory, else the largest tiles "
                                     "that do (smaller ones after an out-of-memory error). Or decode in overlapping "
                                     "tiles of this many pixels (e.g. 512); a size above the frame's decodes whole "
                                     "frames."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, vae, samples: dict, chunk_size: int, tile_size: int) -> io.NodeOutput:
        latents = samples["samples"]
        if latents.ndim != 5:
            raise ValueError(f"expected video latents (B, 16, T, h, w), got shape {tuple(latents.shape)}: "
                             "is this LATENT from a Pyramid Flow node?")
        tiles = tile_size or AUTO
        # Ask ComfyUI to free what whole frames need; auto then tiles to what is free.
        needed = 0 if tiles != AUTO else decode_memory_required(vae.patcher.model.diffusion_model, latents.shape,
                                                                chunk_size or None, execution_device(vae))
        with model_on_device(vae, memory_required=needed) as model:
            dtype = next(model.parameters()).dtype
            pixels = model.decode(latents.to(execution_device(vae), dtype), chunk_size=chunk_size or None,
                                  tile_size=tiles, progress=piece_callback())  # (B, 3, F, H, W)
        # To the intermediate device first: no fp32 copies of the whole video on the GPU.
        pixels = pixels.to(comfy.model_management.intermediate_device())
        frames = ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).flatten(0, 1)  # (B*F, H, W, 3)
        return io.NodeOutput(frames)
