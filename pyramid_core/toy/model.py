"""Generate toy-world videos from a trained toy model folder, as uint8 frames to judge.

:class:`ToyModel` loads an official-layout folder (``diffusion_transformer_384p/``,
``causal_video_vae/``, ``tokenizer*/``, ``text_encoder*/``, as ``scripts/train_toy_model.py``
writes it) and runs the library's own pipelines (``text_to_video``, ``image_to_video``,
``continue_video``) with the toy world's size and length. Each call returns ``(T, 128, 128, 3)``
uint8 frames, the input :mod:`.judge` reads.

Defaults: the negative prompt is the empty prompt, the null text the toy DiT was trained with
for classifier-free guidance (the reference's long negative prompt is words the toy text
encoders do not know); the prompt suffix is the samplers' usual one (the toy model was trained
on captions with and without it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..generation import TextCache
from ..sampling import HistoryConfig, continue_video, image_to_video, text_to_video
from ..sampling.conditioning import as_video_pixels, encode_frames, image_to_pixels
from ..latents import decode_from_latents
from ..variants import PROMPT_SUFFIX
from ..video_io import frames_to_pixels, frames_to_uint8
from . import world

DIT_FOLDER = "diffusion_transformer_384p"
QUALITY_FILE = "quality.json"    # its success rates, as benchmarks/toy_quality.py --write-quality writes them


@dataclass
class ToySettings:
    """Sampling settings of one toy video (per-stage lists have one value per pyramid stage)."""

    steps: Sequence[int] = (10, 10, 10)              # first frame
    video_steps: Sequence[int] = (10, 10, 10)        # later units
    guidance: float = 4.0
    # Lower for the video units: there the history carries the object, and strong guidance pulls
    # it toward this small model's text-conditioned idea of the shape, which blurs the outline
    # unit by unit. The committed model at video guidance 2 against 4 (the first frame at 4, 64
    # fresh videos each): image-to-video 48 against 40, text-to-video with the shape 49 against 51
    # (MODEL_CARD.md; benchmarks/toy_quality.py's video guidance row).
    video_guidance: float = 2.0
    history: HistoryConfig = field(default_factory=HistoryConfig)
    negative_prompt: str = ""
    prompt_suffix: str = PROMPT_SUFFIX


class ToyModel:
    """The toy model's DiT, VAE and text encoders, loaded once (fp32 on the CPU by default;
    ``vae_dtype`` defaults to ``dtype``). ``dtype="fp8_e4m3fn"``: the DiT's linear weights
    stored in fp8 and computed in fp32 (everything else in fp32). ``compile``: a mode of
    :data:`~pyramid_core.compile.COMPILE_MODES` to ``torch.compile`` the DiT's blocks with."""

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str = "fp32",
                 vae_dtype: str | None = None, compile: str | None = None) -> None:
        from ..loading import load_dit, load_vae, model_kind, resolve_dtype
        from ..models.text_encoders import PyramidTextEncoder
        from ..variants import choose_variant

        folder = Path(folder)
        storage = None
        if dtype == "fp8_e4m3fn":
            dtype, storage = "fp32", "fp8_e4m3fn"
        self.dit = load_dit(folder / DIT_FOLDER, dtype=dtype, weight_dtype=storage, device=device)
        if compile:
            from ..compile import compile_dit

            compile_dit(self.dit, compile, device)
        self.variant, _ = choose_variant(model_kind(self.dit), DIT_FOLDER)
        self.vae = load_vae(folder / "causal_video_vae", dtype=vae_dtype or dtype, device=device)
        self.text = TextCache(PyramidTextEncoder.from_pretrained(folder, dtype=resolve_dtype(dtype), device=device))
        self.device = torch.device(device)

    def _common(self, seed: int, settings: ToySettings) -> dict:
        return dict(variant=self.variant, video_steps=list(settings.video_steps),
                    video_guidance_scale=settings.video_guidance, history=settings.history,
                    generator=torch.Generator().manual_seed(seed))

    def _text(self, prompt: str, settings: ToySettings):
        return self.text.conditioning(prompt, settings.negative_prompt, settings.prompt_suffix)

    def _encode_clip(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames ``(1 + 8j, H, W, 3)`` -> normalised latents ``(1, 16, 1 + j, H / 8, W / 8)``
        (the posterior mean: no random draw)."""
        pixels = frames_to_pixels(torch.from_numpy(np.ascontiguousarray(frames))).to(self.device)
        return encode_frames(self.vae, pixels, self.variant, sample=False)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents ``(1, 16, T, h, w)`` -> uint8 frames ``(1 + 8(T-1), H, W, 3)``."""
        with torch.no_grad():
            pixels = decode_from_latents(self.vae, latents, self.variant, chunk_size=1)
        return frames_to_uint8(pixels)[0].cpu().numpy()

    def text_to_video(self, prompt: str, seed: int, settings: ToySettings = ToySettings(),
                      num_frames: int = world.FRAMES) -> np.ndarray:
        """``(num_frames, 128, 128, 3)`` uint8 frames of ``prompt`` (the world's size)."""
        common = self._common(seed, settings)
        latents = text_to_video(self.dit, self._text(prompt, settings), width=world.WIDTH, height=world.HEIGHT,
                                num_frames=num_frames, steps=list(settings.steps),
                                guidance_scale=settings.guidance, **common)
        return self.decode(latents)

    def image_to_video(self, image: np.ndarray, prompt: str, seed: int, settings: ToySettings = ToySettings(),
                       num_frames: int = world.FRAMES) -> np.ndarray:
        """Frames that start from ``image`` (uint8 ``(128, 128, 3)``)."""
        common = self._common(seed, settings)
        pixels = as_video_pixels(image_to_pixels(torch.from_numpy(np.ascontiguousarray(image))), "image")
        latent = encode_frames(self.vae, pixels.to(self.device), self.variant, generator=common["generator"])
        latents = image_to_video(self.dit, self._text(prompt, settings), image_latent=latent,
                                 num_frames=num_frames, **common)
        return self.decode(latents)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` (uint8 ``(1 + 8j, 128, 128, 3)``) through the VAE alone (posterior mean, then
        decoded), as ``(1 + 8j, 128, 128, 3)`` uint8: what a DiT that generated exactly the
        latents of the clip would show, so the checks on it are the ceiling of any DiT on this VAE."""
        return self.decode(self._encode_clip(frames))

    def continue_video(self, frames: np.ndarray, prompt: str, seed: int, settings: ToySettings = ToySettings(),
                       num_frames: int = world.FRAMES) -> np.ndarray:
        """``frames`` (uint8 ``(1 + 8j, 128, 128, 3)``) continued to ``num_frames`` frames in all."""
        common = self._common(seed, settings)
        latents = continue_video(self.dit, self._text(prompt, settings), video_latents=self._encode_clip(frames),
                                 num_frames=num_frames, **common)
        return self.decode(latents)

