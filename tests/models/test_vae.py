"""CausalVideoVAE: checkpoint layout, tiling geometry, chunking, RNG and input safety."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from pyramid_core.models.vae import CausalCache, CausalConv3d, CausalVideoVAE, TilePlan
from pyramid_core.models.vae.tiling import run_tiled

DATA = Path(__file__).resolve().parents[1] / "data"
MANIFEST = DATA / "manifests" / "CausalVideoVAE.json"
TINY_CONFIG = DATA / "golden" / "config_vae_tiny.json"


@lru_cache(maxsize=1)
def tiny_vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE.from_config(json.loads(TINY_CONFIG.read_text())).eval()


def test_released_config_builds_the_checkpoint_layout_on_meta():
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        vae = CausalVideoVAE.from_config(manifest["released_config"])
    state = vae.state_dict()
    shapes = {name: list(t.shape) for name, t in state.items()}
    assert shapes == manifest["state_dict"]
    assert sum(t.numel() for t in state.values()) == manifest["total_parameters"]
    assert all(str(t.dtype).removeprefix("torch.") == manifest["dtype_at_construction"][n] for n, t in state.items())
    assert [n for n, _ in vae.named_buffers()] == manifest["persistent_buffers"] + manifest["non_persistent_buffers"]


def test_save_and_reload_roundtrip(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path)
    again = CausalVideoVAE.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(vae.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_unsupported_config_is_rejected():
    with pytest.raises(ValueError, match="interpolate"):
        CausalVideoVAE(encoder_block_out_channels=(8,), decoder_block_out_channels=(8,), interpolate=True)


# ---------------------------------------------------------------- causal conv and chunking


@pytest.mark.parametrize("stride", [1, 2])
def test_causal_conv_chunks_equal_one_pass(stride):
    torch.manual_seed(0)
    conv = CausalConv3d(3, 4, kernel_size=3, stride=(stride, 1, 1))
    x = torch.randn(1, 3, 13, 4, 4)
    full = conv(x)
    cache, parts = CausalCache(), []
    for sl in (slice(0, 5), slice(5, 9), slice(9, 11), slice(11, 13)):
        parts.append(conv(x[:, :, sl], cache))
        assert all(t.shape[2] <= 2 for t in cache.tails.values())  # memory: a tail, not the video
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_a_single_frame_takes_the_last_time_tap_only_with_the_same_values_and_gradients(stride):
    """One frame with nothing before it skips the time taps that would multiply the front padding's
    zeros: the output and the weight and input gradients are the full padded convolution's, and a
    chunked pass that starts with that frame goes on as one pass does."""
    torch.manual_seed(0)
    conv = CausalConv3d(3, 4, kernel_size=3, stride=stride)
    frame = torch.randn(2, 3, 1, 6, 6, requires_grad=True)
    out = conv(frame)
    padded = torch.nn.functional.pad(frame, conv.time_padding)
    expected = torch.nn.functional.conv3d(padded, conv.conv.weight, conv.conv.bias, stride=conv.conv.stride,
                                          padding=conv.conv.padding)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    grads = torch.autograd.grad((out * out.detach()).sum(), [conv.conv.weight, conv.conv.bias, frame])
    expected_grads = torch.autograd.grad((expected * expected.detach()).sum(), [conv.conv.weight, conv.conv.bias, frame])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not grads[0][:, :, :-1].any()          # the skipped taps: no gradient, as in the full conv
    video = torch.randn(1, 3, 9, 6, 6)
    with torch.no_grad():
        cache = CausalCache()
        first = conv(video[:, :, :1], cache)
        cache.first_chunk = False
        torch.testing.assert_close(torch.cat([first, conv(video[:, :, 1:], cache)], dim=2), conv(video),
                                   atol=1e-6, rtol=0)


def test_chunked_encode_and_decode_equal_one_pass():
    vae = tiny_vae()
    torch.manual_seed(1)
    video = torch.rand(1, 3, 25, 16, 24) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(video).mean
        torch.testing.assert_close(vae.encode(video, chunk_size=8).mean, mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(vae.encode(video, chunk_size=16).mean, mean, atol=1e-5, rtol=0)
        pixels = vae.decode(mean)
        for chunk in (1, 2, 3):  # 3 does not divide the 3 later latent frames evenly after 1 + 3
            torch.testing.assert_close(vae.decode(mean, chunk_size=chunk), pixels, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- tiling


@pytest.mark.parametrize("tile_px", [8, 16, 24, 40, 48, 56, 72, 200])
def test_tile_geometry_is_seamless_for_every_multiple_of_8(tile_px):
    """With a pointwise 'network' blending identical values must reproduce the untiled output."""
    plan = TilePlan.from_pixels(tile_px, 8)
    latents = torch.randn(1, 2, 3, 7, 11)
    upsample = lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2) * 2  # noqa: E731
    torch.testing.assert_close(run_tiled(upsample, latents, plan, 1, 8), upsample(latents), atol=1e-6, rtol=0)
    pixels = torch.randn(1, 3, 1, 56, 88)
    pool = lambda t: torch.nn.functional.avg_pool3d(t, (1, 8, 8))  # noqa: E731
    torch.testing.assert_close(run_tiled(pool, pixels, plan, 8, 1), pool(pixels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("tile_px", [16, 24, 40])
def test_tiles_not_multiple_of_32_px_give_the_right_sizes(tile_px):
    vae = tiny_vae()
    torch.manual_seed(2)
    video = torch.rand(1, 3, 1, 40, 56) * 2 - 1  # 5 x 7 latents: no tile size divides both
    with torch.no_grad():
        post = vae.encode(video, tile_size=tile_px)
        assert post.mean.shape == (1, 16, 1, 5, 7)
        pixels = vae.decode(post.mean, tile_size=tile_px, chunk_size=1)
    assert pixels.shape == video.shape
    assert torch.isfinite(pixels).all()


def test_bad_tile_and_chunk_sizes_are_rejected_before_work():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.decode(torch.zeros(1, 16, 1, 4, 4), tile_size=12)
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 3, 9, 16, 16), chunk_size=4)
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        vae.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 1, 20, 16))


# ---------------------------------------------------------------- RNG and input safety


def test_posterior_sample_is_seeded_by_the_callers_generator_only():
    vae = tiny_vae()
    with torch.no_grad():
        post = vae.encode(torch.rand(2, 3, 9, 16, 16) * 2 - 1)
    state = torch.get_rng_state()
    a = post.sample(torch.Generator().manual_seed(7))
    b = post.sample(torch.Generator().manual_seed(7))
    c = post.sample(torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state), "sampling touched the global RNG"
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(post.mode(), post.mean)


@pytest.mark.parametrize("kwargs", [{}, {"chunk_size": 1}, {"chunk_size": 1, "tile_size": 16}])
def test_decode_leaves_its_input_unchanged(kwargs):
    latents = torch.randn(1, 16, 3, 3, 4)
    before = latents.clone()
    with torch.no_grad():
        tiny_vae().decode(latents, **kwargs)
    assert torch.equal(latents, before)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    vae = CausalVideoVAE.from_config(json.loads(TINY_CONFIG.read_text())).train()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1

    def grads():
        vae.zero_grad()
        posterior, recon = vae(video, sample_posterior=False)
        ((recon - video).pow(2).mean() + 1e-3 * posterior.kl().mean()).backward()
        return [p.grad.clone() for p in vae.parameters()]

    plain = grads()
    vae.enable_gradient_checkpointing()
    assert vae.encoder.gradient_checkpointing and vae.decoder.gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method, shape, kwargs, pieces", [
    ("decode", (1, 16, 4, 8, 8), dict(chunk_size=1, tile_size=32), 9 * 3),      # 3x3 tiles x chunks 2+1+1
    ("decode", (1, 16, 4, 8, 8), dict(chunk_size=2), 2),                        # chunks of 3 and 1
    ("decode", (1, 16, 4, 8, 8), {}, 1),
    ("encode", (1, 3, 17, 64, 64), dict(chunk_size=8, tile_size=32), 9 * 2),    # 3x3 tiles x 2 chunks
    ("encode", (1, 3, 17, 64, 64), dict(tile_size=32), 9),
])
def test_progress_counts_every_piece_and_can_stop_after_one(method, shape, kwargs, pieces):
    vae = tiny_vae()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reports = []
    with torch.no_grad():
        getattr(vae, method)(x, progress=lambda done, total: reports.append((done, total)), **kwargs)
    assert reports == [(k, pieces) for k in range(1, pieces + 1)]

    class Stop(Exception):
        pass

    def stop(done, total):                      # what a node does when the user presses Cancel
        raise Stop

    passes = []
    pass_name = "_decode_pass" if method == "decode" else "_encode_pass"
    original = getattr(vae, pass_name)
    setattr(vae, pass_name, lambda *a: passes.append(1) or original(*a))
    try:
        with torch.no_grad(), pytest.raises(Stop):
            getattr(vae, method)(x, progress=stop, **kwargs)
    finally:
        delattr(vae, pass_name)
    assert len(passes) == 1                     # stopped within the first piece


def test_fresh_upsamplers_start_as_nearest_neighbour():
    """A freshly made upsampler repeats each value over its 2x2 pixels (space) or 2 frames
    (time) instead of interleaving unrelated random images (ICNR init): a VAE trained from
    scratch then starts without checkerboard artefacts."""
    from pyramid_core.models.vae.resample import SpatialUpsample2x, TemporalUpsample2x

    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 5, 6)
    space = SpatialUpsample2x(4)(x)                                  # (1, 4, 3, 10, 12)
    assert torch.equal(space, space[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1))
    time = TemporalUpsample2x(4)(x)                                  # one pass: 1 + 2 * 2 frames
    assert time.shape[2] == 5 and torch.equal(time[:, :, 1::2], time[:, :, 2::2])
    assert not torch.equal(time[:, :, 1], time[:, :, 3])             # still a learned conv, not a copy
