"""fp16 never makes a black video silently: an overflow stops the sampler at its first step,
or the VAE before it returns pixels, with a message naming fp16 and what to use instead."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import random_text

from pyramid_core.loading import load_dit, load_vae
from pyramid_core.numerics import NonFiniteOutputError
from pyramid_core.sampling import text_to_video

TINY = dict(width=128, height=64, num_frames=9, steps=1, video_steps=1)


def _loud_dit(folder, dtype: str):
    """The tiny DiT with an output projection 1e6 times too large: about 1e6 in its prediction,
    finite in fp32 and bf16, past fp16's 65504."""
    dit = load_dit(folder, dtype=dtype)
    with torch.no_grad():
        dit.proj_out.weight.mul_(1e6)
        dit.proj_out.bias.mul_(1e6)
    return dit


def _t2v(dit):
    return text_to_video(dit, random_text(), generator=torch.Generator().manual_seed(0), **TINY)


def test_an_fp16_overflow_stops_at_the_first_step_and_says_what_to_use(golden_model_dir):
    with pytest.raises(NonFiniteOutputError) as err:
        _t2v(_loud_dit(golden_model_dir["flux_tiny"], "fp16"))
    message = str(err.value)
    assert "the DiT gave NaN or inf values in fp16 at pyramid stage 1, step 1" in message
    assert "Load the DiT in bf16" in message and "fp32 on a GPU without bf16" in message
    assert torch.isfinite(_t2v(_loud_dit(golden_model_dir["flux_tiny"], "fp32"))).all()


def test_the_vae_refuses_to_return_non_finite_pixels(golden_model_dir):
    vae = load_vae(golden_model_dir["vae_tiny"], dtype="fp16")
    latents = torch.randn(1, 16, 2, 4, 4)
    assert torch.isfinite(vae.decode(latents)).all()
    with torch.no_grad():
        vae.decoder.conv_out.conv.weight.mul_(1e6)
    with pytest.raises(NonFiniteOutputError, match="the VAE gave NaN or inf values in fp16 at decode.*Load the VAE"):
        vae.decode(latents)
    latents[0, 3, 1, 2, 2] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="the latents to decode hold NaN or inf"):
        vae.decode(latents)
