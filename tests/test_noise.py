"""Block-correlated noise (the closed-form factor, parity with the reference) and the initial coarse noise."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from golden_utils import golden, load_nested, load_tensor, section
from reference_tolerances import FP32_EPS, TORCH_RANDN_ACROSS_CPUS, as_blocks, assert_block_noise_matches_reference

import pyramid_core.noise as noise_module
from pyramid_core.noise import block_noise, block_noise_cholesky, block_noise_covariance, coarsen_noise, initial_noise
from pyramid_core.rng import standard_normal


# --------------------------------------------------------------------------------------
# The closed-form factor
# --------------------------------------------------------------------------------------

GAMMAS = [0.0, 0.01, 0.1, 0.2, 0.25, 0.3, 0.33, 1 / 3 - 1e-6, 1 / 3]


@pytest.mark.parametrize("gamma", GAMMAS)
def test_factor_is_exact_for_every_gamma(gamma):
    exact = noise_module._cholesky_float64(noise_module._exact_gamma(gamma))
    covariance = torch.eye(4, dtype=torch.float64) * (1 + gamma) - gamma
    assert torch.equal(exact, exact.tril()) and (exact.diagonal() >= 0).all()
    torch.testing.assert_close(exact @ exact.T, covariance, atol=4e-16, rtol=0)   # a few float64 ulps
    lower = block_noise_cholesky(gamma)
    assert lower.dtype == torch.float32 and torch.equal(lower, exact.to(torch.float32))


def test_factor_at_one_third_is_singular_exactly():
    """The released gamma: the last pivot is 0 (LAPACK's fp32 gets ~4e-4 by rounding, or fails),
    and every column of the exact factor sums to zero, so block noise sums to zero."""
    lower = block_noise_cholesky(1 / 3)
    assert lower[3, 3].item() == 0.0
    root2, root23 = math.sqrt(2.0) / 3, math.sqrt(2 / 3)
    expected = torch.tensor([[1, 0, 0, 0], [-1 / 3, 2 * root2, 0, 0], [-1 / 3, -root2, root23, 0],
                             [-1 / 3, -root2, -root23, 0]], dtype=torch.float64)
    assert torch.equal(lower, expected.to(torch.float32))
    assert noise_module._cholesky_float64(noise_module._exact_gamma(1 / 3)).sum(0).abs().max() <= 2**-52
    # gamma as configs store it (the double nearest 1/3) and as a fraction: the same factor
    assert torch.equal(block_noise_cholesky(0.3333333333333333), block_noise_cholesky(float(Fraction(1, 3))))


# --------------------------------------------------------------------------------------
# Golden: the reference's draws, up to its rounded factor
# --------------------------------------------------------------------------------------

def test_block_noise_matches_golden_record():
    spec = section("block_noise")
    args = spec["args"]
    shape = (args["bs"], args["ch"], args["temp"], args["height"], args["width"])
    generator = torch.Generator().manual_seed(spec["global_seed"])
    state = generator.get_state()
    ours = block_noise(shape, spec["gamma"], generator=generator)
    assert_block_noise_matches_reference(ours, load_tensor("block_noise.sample"), spec["gamma"], state)


def _global_rng_runs() -> list[str]:
    """Recorded runs that drew an image latent (VAE posterior eps) and then block noise
    from the global RNG (image-to-video)."""
    return [name for name in golden()["sections"]
            if f"{name}.vae_posterior_eps" in golden()["tensors"] and f"{name}.block_noise.0" in golden()["tensors"]]


@pytest.mark.parametrize("name", _global_rng_runs())
def test_image_to_video_global_stream_matches_golden(name):
    """i2v drew the VAE posterior eps (torch.randn) and then the block noises from one global
    RNG: one seeded generator fed in the same order gives every recorded value."""
    run = section(name)
    gamma = run["runner"]["effective"]["scheduler_config"]["gamma"]
    generator = torch.Generator().manual_seed(run["global_seed_before_generate"])
    eps = load_tensor(f"{name}.vae_posterior_eps")
    torch.testing.assert_close(torch.randn(eps.shape, generator=generator), eps, atol=TORCH_RANDN_ACROSS_CPUS, rtol=0)
    for recorded in load_nested(f"{name}.block_noise"):
        state = generator.get_state()
        drawn = block_noise(recorded.shape, gamma, generator=generator)
        assert_block_noise_matches_reference(drawn, recorded, gamma, state)


# --------------------------------------------------------------------------------------
# The block noise itself
# --------------------------------------------------------------------------------------

def test_block_noise_has_the_block_covariance():
    gamma = 1 / 3
    noise = block_noise((4, 16, 1, 64, 64), gamma, generator=torch.Generator().manual_seed(0))
    blocks = as_blocks(noise).double()
    covariance = blocks.T @ blocks / blocks.shape[0]
    torch.testing.assert_close(covariance, block_noise_covariance(gamma).double(), atol=0.02, rtol=0)
    assert blocks.mean().abs() < 0.01
    # gamma = 1/3: the exact factor's columns sum to 0, so each block sums to 0 up to the
    # rounding of its four fp32 values (half an ulp each: 2^-24 |v_j|) and of the fp32
    # factor, whose columns then sum to at most 4 x 2^-24 (weighted by |eps_k|).
    eps = standard_normal(blocks.shape, torch.Generator().manual_seed(0)).double()
    bound = FP32_EPS * (blocks.abs().sum(-1) + 4 * eps.abs().sum(-1))
    assert (blocks.sum(-1).abs() <= bound).all()
    assert blocks.sum(-1).abs().max() < 1e-6


def test_block_noise_is_the_factor_times_one_standard_normal_draw():
    shape = (1, 2, 3, 4, 6)
    noise = block_noise(shape, 1 / 3, generator=torch.Generator().manual_seed(3))
    eps = standard_normal((2 * 3 * 2 * 3, 4), torch.Generator().manual_seed(3)).double()
    expected = (eps @ block_noise_cholesky(1 / 3).double().T).float()     # 4-term dot products in float64
    # Block n of the draw lands at (lead, h, w) = divmod in the loop order, pixel (p, q) = divmod(j, 2).
    assert torch.equal(as_blocks(noise), expected)
    assert torch.equal(noise, expected.reshape(1, 2, 3, 2, 3, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(shape))


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
        assert torch.equal(half, a.to(dtype))      # fp32 values, cast at the end


def test_the_global_generator_is_the_default():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        drawn = block_noise((1, 2, 1, 4, 4))
    assert torch.equal(drawn, block_noise((1, 2, 1, 4, 4), generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("shape", [(1, 1, 1, 3, 4), (1, 1, 1, 4, 5), (4,), (1, 1, 1, 0, 2)])
def test_block_noise_rejects_shapes_without_2x2_blocks(shape):
    with pytest.raises(ValueError):
        block_noise(shape)


@pytest.mark.parametrize("gamma", [0.5, -0.1, 1 / 3 + 1e-9])
def test_block_noise_rejects_gammas_without_a_covariance(gamma):
    with pytest.raises(ValueError, match="gamma"):
        block_noise((1, 1, 1, 2, 2), gamma)


# --------------------------------------------------------------------------------------
# Initial noise
# --------------------------------------------------------------------------------------

def test_initial_noise_shape_and_variance():
    noise = initial_noise((2, 16, 3, 48, 80), 3, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (2, 16, 3, 12, 20) and noise.dtype == torch.float32
    assert abs(noise.var().item() - 1.0) < 0.05     # 2x2 mean times 2 keeps unit variance


def test_initial_noise_is_the_reference_downsample_of_one_draw():
    """The reference: N(0, I) at full size, then bilinear x1/2 times 2 per stage (fp32).
    Ours sums in float64 and rounds once. The reference's fp32 adds (3 per stage, partial
    sums below 4 max|x|) each round by at most half an ulp: 2 stages x 3 x 2^-24 x 4 max|x|."""
    shape = (1, 2, 3, 8, 12)
    full = standard_normal(shape, torch.Generator().manual_seed(4))
    planes = full.permute(0, 2, 1, 3, 4).reshape(3, 2, 8, 12)          # the reference's (b t) c h w
    for size in ((4, 6), (2, 3)):
        planes = torch.nn.functional.interpolate(planes, size=size, mode="bilinear") * 2
    expected = planes.reshape(1, 3, 2, 2, 3).permute(0, 2, 1, 3, 4)
    ours = initial_noise(shape, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours, expected, atol=24 * 2.0**-24 * full.abs().max().item(), rtol=0)
    assert torch.equal(ours, coarsen_noise(full, 3))
    half = initial_noise(shape, 3, generator=torch.Generator().manual_seed(4), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, ours.to(torch.bfloat16))


@pytest.mark.parametrize("shape, stages", [((1, 16, 1, 6, 8), 3), ((1, 16, 6, 8), 3), ((1, 16, 1, 8, 8), 0)])
def test_initial_noise_rejects_sizes_the_pyramid_cannot_halve(shape, stages):
    with pytest.raises(ValueError):
        initial_noise(shape, stages)
