"""Block-correlated noise and the initial coarse noise."""

from __future__ import annotations

import pytest
import torch
from golden_utils import golden, load_nested, load_tensor, section

from pyramid_core.noise import block_noise, block_noise_cholesky, block_noise_covariance, initial_noise


def _reference_loop(shape, gamma, seed):
    """The reference's way, reimplemented: one MultivariateNormal draw per 2x2 block from
    the global RNG, blocks in (leading..., h/2, w/2) order, then rearranged into the image."""
    *lead, height, width = shape
    covariance = torch.eye(4) * (1 + gamma) - torch.ones(4, 4) * gamma
    dist = torch.distributions.MultivariateNormal(torch.zeros(4), covariance)
    count = 1
    for size in lead:
        count *= size
    count *= (height // 2) * (width // 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = torch.stack([dist.sample() for _ in range(count)])            # (N, 4)
    draws = draws.reshape(*lead, height // 2, width // 2, 2, 2)
    return draws.permute(*range(len(lead)), -4, -2, -3, -1).reshape(shape)


# --------------------------------------------------------------------------------------
# Golden: bit-exact reproduction of the reference's global-RNG stream
# --------------------------------------------------------------------------------------

def test_block_noise_matches_golden_record():
    spec = section("block_noise")
    args = spec["args"]
    shape = (args["bs"], args["ch"], args["temp"], args["height"], args["width"])
    generator = torch.Generator().manual_seed(spec["global_seed"])
    noise = block_noise(shape, spec["gamma"], generator=generator, match_reference_rng=True)
    assert torch.equal(noise, load_tensor("block_noise.sample"))


def _global_rng_runs() -> list[str]:
    """Recorded runs that drew an image latent (VAE posterior eps) and then block noise
    from the global RNG (image-to-video)."""
    return [name for name in golden()["sections"]
            if f"{name}.vae_posterior_eps" in golden()["tensors"] and f"{name}.block_noise.0" in golden()["tensors"]]


@pytest.mark.parametrize("name", _global_rng_runs())
def test_image_to_video_global_stream_matches_golden(name):
    """i2v drew the VAE posterior eps and then the block noises from one global RNG: one
    seeded generator fed in the same order gives every recorded value."""
    run = section(name)
    gamma = run["runner"]["effective"]["scheduler_config"]["gamma"]
    generator = torch.Generator().manual_seed(run["global_seed_before_generate"])
    eps = load_tensor(f"{name}.vae_posterior_eps")
    assert torch.equal(torch.randn(eps.shape, generator=generator), eps)
    for index, recorded in enumerate(load_nested(f"{name}.block_noise")):
        drawn = block_noise(recorded.shape, gamma, generator=generator, match_reference_rng=True)
        assert torch.equal(drawn, recorded), f"{name}.block_noise.{index}"


def test_reference_stream_matches_the_reference_loop():
    shape, seed = (2, 3, 2, 4, 6), 20240101
    expected = _reference_loop(shape, 1 / 3, seed)
    ours = block_noise(shape, 1 / 3, generator=torch.Generator().manual_seed(seed), match_reference_rng=True)
    assert torch.equal(ours, expected)


def test_reference_stream_from_the_global_rng():
    shape, seed = (1, 2, 1, 4, 4), 7
    expected = _reference_loop(shape, 1 / 3, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ours = block_noise(shape, 1 / 3, match_reference_rng=True)
    assert torch.equal(ours, expected)


# --------------------------------------------------------------------------------------
# The fast (default) path
# --------------------------------------------------------------------------------------

def test_fast_path_has_the_block_covariance():
    gamma = 1 / 3
    noise = block_noise((4, 16, 1, 64, 64), gamma, generator=torch.Generator().manual_seed(0))
    blocks = noise.reshape(4, 16, 1, 32, 2, 32, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(-1, 4).double()
    covariance = blocks.T @ blocks / blocks.shape[0]
    torch.testing.assert_close(covariance, block_noise_covariance(gamma).double(), atol=0.02, rtol=0)
    assert blocks.mean().abs() < 0.01
    # gamma = 1/3 makes the covariance singular along 11^T: blocks sum to ~0.
    assert blocks.sum(-1).abs().max() < 1e-2


def test_fast_path_is_a_linear_map_of_one_randn_draw():
    shape = (1, 2, 3, 4, 6)
    noise = block_noise(shape, 1 / 3, generator=torch.Generator().manual_seed(3))
    eps = torch.randn((2 * 3 * 2 * 3, 4), generator=torch.Generator().manual_seed(3))
    blocks = eps @ block_noise_cholesky(1 / 3).T
    # Block n of the draw lands at (lead, h, w) = divmod in the loop order, pixel (p, q) = divmod(j, 2).
    expected = blocks.reshape(1, 2, 3, 2, 3, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(shape)
    assert torch.equal(noise, expected)


def test_seeding_dtype_and_device():
    shape = (1, 4, 2, 6, 8)
    a = block_noise(shape, generator=torch.Generator().manual_seed(1))
    b = block_noise(shape, generator=torch.Generator().manual_seed(1))
    c = block_noise(shape, generator=torch.Generator().manual_seed(2))
    assert a.shape == shape and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b) and not torch.equal(a, c)
    for dtype in (torch.bfloat16, torch.float16):
        half = block_noise(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        assert half.dtype == dtype
        assert torch.equal(half, a.to(dtype))      # fp32 math, cast at the end


def test_cholesky_is_fp32_and_factorises_the_covariance():
    lower = block_noise_cholesky(1 / 3)
    assert lower.dtype == torch.float32 and torch.equal(lower, lower.tril())
    torch.testing.assert_close(lower @ lower.T, block_noise_covariance(1 / 3), atol=1e-6, rtol=0)
    lower[0, 0] = 5.0                               # callers get a copy, not the cache
    assert block_noise_cholesky(1 / 3)[0, 0] == 1.0


@pytest.mark.parametrize("shape", [(1, 1, 1, 3, 4), (1, 1, 1, 4, 5), (4,), (1, 1, 1, 0, 2)])
def test_block_noise_rejects_shapes_without_2x2_blocks(shape):
    with pytest.raises(ValueError):
        block_noise(shape)


@pytest.mark.parametrize("gamma", [0.5, -0.1])
def test_block_noise_rejects_gammas_without_a_covariance(gamma):
    with pytest.raises(ValueError, match="gamma"):
        block_noise((1, 1, 1, 2, 2), gamma)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")
def test_reference_stream_needs_a_cpu_generator():
    with pytest.raises(ValueError, match="CPU generator"):
        block_noise((1, 1, 1, 2, 2), generator=torch.Generator("cuda"), match_reference_rng=True)


# --------------------------------------------------------------------------------------
# Initial noise
# --------------------------------------------------------------------------------------

def test_initial_noise_shape_and_variance():
    noise = initial_noise((2, 16, 3, 48, 80), 3, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (2, 16, 3, 12, 20) and noise.dtype == torch.float32
    assert abs(noise.var().item() - 1.0) < 0.05     # 2x2 mean times 2 keeps unit variance


def test_initial_noise_is_the_reference_downsample_of_one_draw():
    shape = (1, 2, 3, 8, 12)
    full = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    planes = full.permute(0, 2, 1, 3, 4).reshape(3, 2, 8, 12)          # the reference's (b t) c h w
    for size in ((4, 6), (2, 3)):
        planes = torch.nn.functional.interpolate(planes, size=size, mode="bilinear") * 2
    expected = planes.reshape(1, 3, 2, 2, 3).permute(0, 2, 1, 3, 4)
    ours = initial_noise(shape, 3, generator=torch.Generator().manual_seed(4), dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, expected.to(torch.bfloat16))


@pytest.mark.parametrize("shape, stages", [((1, 16, 1, 6, 8), 3), ((1, 16, 6, 8), 3), ((1, 16, 1, 8, 8), 0)])
def test_initial_noise_rejects_sizes_the_pyramid_cannot_halve(shape, stages):
    with pytest.raises(ValueError):
        initial_noise(shape, stages)
