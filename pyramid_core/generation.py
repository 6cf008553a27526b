"""What ``generate`` and ``generate-batch`` do once their arguments are checked: load the
models, sample latents for one request, decode and write them.

A *request* is an ``argparse.Namespace`` with the fields of ``python -m pyramid_core generate``
(``mode``, ``prompt``, ``seed``, ``steps``, ``image`` ...; see :func:`pyramid_core.cli.build_parser`).
Under a parallel plan (:mod:`pyramid_core.parallel`) every rank of a video group calls
:func:`sample_latents` with the same request and gets the same latents; only the group's
leader decodes and writes.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .compile import compile_dit
from .latents import decode_from_latents
from .models.text_encoders import PromptEmbeddings
from .parallel import ParallelGroups, broadcast_from_leader, parallelize
from .sampling import HistoryConfig, TextConditioning, continue_video, image_to_pixels, image_to_video, text_to_video
from .sampling.conditioning import as_video_pixels, encode_frames
from .sizes import VAE_TEMPORAL_FACTOR, check_video_size
from .variants import IMAGE_TO_VIDEO_GUIDANCE, Variant, choose_variant
from .video_io import IMAGE_SUFFIXES, frames_to_pixels, frames_to_uint8, read_image, read_video, write_image, write_video

__all__ = ["Models", "TextCache", "decode_frames", "load_models", "sample_latents", "sampling_options", "write_frames"]


@dataclass
class Models:
    """The loaded models of a run; ``dit`` is what this rank samples with (parallel wrapper or not)."""

    dit: nn.Module
    vae: nn.Module
    text_encoder: object
    variant: Variant


def load_models(args, paths: tuple[Path, Path, Path], groups: ParallelGroups) -> Models:
    """DiT, VAE and text encoders from ``paths`` (DiT, VAE, text encoder folder) on ``args.device``;
    the DiT made parallel over ``groups`` (``ValueError`` when its heads do not split)."""
    from .loading import load_dit, load_vae, model_kind, resolve_dtype
    from .models.block_swap import BlockSwap, transformer_blocks
    from .models.text_encoders import PyramidTextEncoder

    dit_path, vae_path, text_path = paths
    # With block swap the DiT stays on the host and BlockSwap places it: never whole on the device.
    dit = load_dit(dit_path, dtype=args.dtype, weight_dtype=args.weight_dtype,
                   device="cpu" if args.block_swap else args.device)
    if args.block_swap:
        BlockSwap(dit, args.device, swapped=min(args.block_swap, len(transformer_blocks(dit))))
    variant, why = choose_variant(model_kind(dit), str(dit_path), args.variant or "auto")
    if groups.leader:
        print(f"variant {why}", file=sys.stderr)
    if args.compile != "off":                   # the model's own blocks, before any parallel wrapper
        compile_dit(dit, mode=args.compile, device=args.device)
    dit = parallelize(dit, groups)
    vae = load_vae(vae_path, dtype=args.vae_dtype or args.dtype, device=args.device)
    on_host = args.text_encoder_device == "cpu"
    weights = resolve_dtype(args.text_encoder_weights) if args.text_encoder_weights else None
    # On the host in fp32: CPUs without bf16 units (most) emulate bf16 matmuls far slower.
    text_encoder = PyramidTextEncoder.from_pretrained(
        text_path, dtype=torch.float32 if on_host else resolve_dtype(args.dtype), device="cpu" if on_host else args.device,
        weight_dtype=weights)
    return Models(dit, vae, text_encoder, variant)


def sampling_options(args, variant: Variant) -> dict:
    """Steps and guidance: the request's, else the reference's for this variant and mode."""
    video_guidance = IMAGE_TO_VIDEO_GUIDANCE if args.mode == "i2v" else variant.video_guidance_scale
    return dict(steps=args.steps or list(variant.steps), video_steps=args.video_steps or list(variant.video_steps),
                guidance_scale=variant.guidance_scale if args.guidance is None else args.guidance,
                video_guidance_scale=video_guidance if args.video_guidance is None else args.video_guidance)


class TextCache:
    """Prompt embeddings, each distinct text encoded once (a batch repeats prompts over seeds and
    shares one negative prompt); the ``capacity`` most recently used texts are kept."""

    def __init__(self, text_encoder, capacity: int = 32):
        self.text_encoder, self.capacity = text_encoder, capacity
        self._cache: OrderedDict[str, PromptEmbeddings] = OrderedDict()
        self.encoded = 0                                   # texts run through the encoder so far

    def _embed(self, text: str) -> PromptEmbeddings:
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        embeddings = PromptEmbeddings(*self.text_encoder.encode_prompt([text]))
        self.encoded += 1
        self._cache[text] = embeddings
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return embeddings

    def conditioning(self, prompt: str, negative_prompt: Optional[str], prompt_suffix: str) -> TextConditioning:
        """What :func:`pyramid_core.sampling.encode_text` returns for these texts."""
        negative = self._embed(negative_prompt if negative_prompt is not None else "")
        return TextConditioning(self._embed(prompt + prompt_suffix), negative)


def trim_to_vae_length(frames: torch.Tensor) -> torch.Tensor:
    """Keep the longest ``1 + 8k`` prefix (the causal VAE's clip lengths)."""
    keep = 1 + (frames.shape[0] - 1) // VAE_TEMPORAL_FACTOR * VAE_TEMPORAL_FACTOR
    if keep != frames.shape[0]:
        print(f"note: using the first {keep} of {frames.shape[0]} frames (the VAE takes 1 + 8k frames)", file=sys.stderr)
    return frames[:keep]


def _context_latents(args, models: Models, generator: torch.Generator, groups: ParallelGroups) -> torch.Tensor:
    """Normalised latents of the request's image (i2v) or clip (continue), the same on every
    rank of a video group: each rank encodes, then takes the leader's result."""
    device = next(models.vae.parameters()).device
    if args.mode == "i2v":
        pixels = as_video_pixels(image_to_pixels(read_image(args.image)).to(device), "image")
        sample = True                     # the posterior sample, drawn from the generator, as image_to_video does
    else:
        frames, _ = read_video(args.video)
        pixels = frames_to_pixels(trim_to_vae_length(frames)).to(device)
        sample = False                    # the posterior mean, as continue_video does by default
    if args.width is not None and (args.width, args.height) != (pixels.shape[-1], pixels.shape[-2]):
        what = "image" if args.mode == "i2v" else "clip"
        raise ValueError(f"the {what} is {pixels.shape[-1]}x{pixels.shape[-2]} px but the video was asked to be "
                         f"{args.width}x{args.height}; resize the {what} or leave width/height out")
    check_video_size(pixels.shape[-1], pixels.shape[-2])
    latents = encode_frames(models.vae, pixels, models.variant, generator=generator, sample=sample,
                            tile_size=args.vae_tile)
    return broadcast_from_leader(latents, groups)


def sample_latents(args, models: Models, num_frames: int, text: TextConditioning, groups: ParallelGroups, *,
                   callback=None) -> torch.Tensor:
    """Normalised latents ``(1, 16, T, h, w)`` of one request (its seed, its mode), the same on every
    rank of this rank's video group (``groups``: one rank alone without torchrun)."""
    variant = models.variant
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    sampling = sampling_options(args, variant)
    common = dict(variant=variant, video_steps=sampling["video_steps"],
                  video_guidance_scale=sampling["video_guidance_scale"], generator=generator, callback=callback,
                  history=HistoryConfig(recent_units=args.recent_units, max_frames=args.history_frames))
    if args.mode == "t2v":
        return text_to_video(models.dit, text, width=args.width or variant.width,
                             height=args.height or variant.height, num_frames=num_frames, steps=sampling["steps"],
                             guidance_scale=sampling["guidance_scale"], **common)
    context = _context_latents(args, models, generator, groups)
    if args.mode == "i2v":
        return image_to_video(models.dit, text, image_latent=context, num_frames=num_frames, **common)
    return continue_video(models.dit, text, video_latents=context, num_frames=num_frames, **common)


def decode_frames(args, models: Models, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> ``(T, H, W, 3)`` uint8 frames."""
    pixels = decode_from_latents(models.vae, latents, models.variant, chunk_size=1, tile_size=args.vae_tile)
    return frames_to_uint8(pixels.cpu())[0]          # converted on the host: no fp32 video on the GPU


def write_frames(path: str | Path, frames: torch.Tensor, fps: int) -> Path:
    """An mp4, or an image file for a path with an image suffix (one frame only); atomic."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        if frames.shape[0] != 1:
            raise ValueError(f"{path} is an image but the result has {frames.shape[0]} frames")
        return write_image(path, frames[0])
    return write_video(path, frames, fps=fps)
