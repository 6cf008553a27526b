"""Latent normalisation: image constants on frame 0, video constants after, no in-place edits."""

from __future__ import annotations

import pytest
import torch

from pyramid_core.latents import decode_from_latents, denormalize_latents, encode_to_latents, normalize_latents
from pyramid_core.variants import VARIANTS


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_frames_use_their_own_constants(name):
    v = VARIANTS[name]
    raw = torch.randn(2, 16, 4, 3, 5)
    before = raw.clone()
    out = normalize_latents(raw, v)
    assert torch.equal(raw, before)
    torch.testing.assert_close(out[:, :, :1], (raw[:, :, :1] - v.image_latent_shift) * v.image_latent_scale)
    torch.testing.assert_close(out[:, :, 1:], (raw[:, :, 1:] - v.video_latent_shift) * v.video_latent_scale)
    back = denormalize_latents(out, name)  # a name works as well as a Variant
    assert torch.equal(out, normalize_latents(raw, v))
    torch.testing.assert_close(back, raw, atol=1e-5, rtol=0)


def test_single_frame_uses_image_constants():
    v = VARIANTS["sd3-768p"]
    raw = torch.randn(1, 16, 1, 2, 2)
    torch.testing.assert_close(normalize_latents(raw, v), (raw - v.image_latent_shift) * v.image_latent_scale)
    torch.testing.assert_close(denormalize_latents(raw, v), raw / v.image_latent_scale + v.image_latent_shift)


def test_bad_shapes_and_names_are_rejected():
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        normalize_latents(torch.zeros(1, 16, 4, 4), "miniflux-384p")
    with pytest.raises(ValueError, match="unknown Pyramid Flow variant"):
        normalize_latents(torch.zeros(1, 16, 1, 4, 4), "nope")


class _StubVAE:
    """Records calls; stands in for CausalVideoVAE so these tests stay about normalisation."""

    def __init__(self):
        self.calls = []

    def encode(self, pixels, chunk_size=None, tile_size=None):
        from pyramid_core.models.vae import DiagonalGaussian

        self.calls.append(("encode", chunk_size, tile_size))
        b, _, t, h, w = pixels.shape
        return DiagonalGaussian(torch.ones(b, 32, 1 + (t - 1) // 8, h // 8, w // 8))

    def decode(self, latents, chunk_size=None, tile_size=None, progress=None):
        self.calls.append(("decode", chunk_size, tile_size, latents.clone()))
        return latents


def test_encode_and_decode_entry_points_normalise_and_pass_settings():
    v = VARIANTS["miniflux-384p"]
    vae = _StubVAE()
    latents = encode_to_latents(vae, torch.zeros(1, 3, 9, 16, 16), v, sample=False, chunk_size=8, tile_size=64)
    assert vae.calls[0] == ("encode", 8, 64)
    torch.testing.assert_close(latents, normalize_latents(torch.ones(1, 16, 2, 2, 2), v))
    before = latents.clone()
    decode_from_latents(vae, latents, v, chunk_size=2, tile_size=128)
    assert torch.equal(latents, before)
    assert vae.calls[1][:3] == ("decode", 2, 128)
    torch.testing.assert_close(vae.calls[1][3], torch.ones(1, 16, 2, 2, 2))


def test_a_clip_from_the_middle_of_a_video_uses_video_constants_only():
    latents = torch.randn(1, 16, 3, 2, 2)
    whole = normalize_latents(torch.cat([torch.zeros(1, 16, 1, 2, 2), latents], dim=2), "miniflux-384p")
    middle = normalize_latents(latents, "miniflux-384p", first_frame=1)
    torch.testing.assert_close(middle, whole[:, :, 1:], rtol=0, atol=0)
    torch.testing.assert_close(denormalize_latents(middle, "miniflux-384p", first_frame=4), latents)
    with pytest.raises(ValueError, match="first_frame"):
        normalize_latents(latents, "miniflux-384p", first_frame=-1)
