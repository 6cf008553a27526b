"""Tolerances for comparing with what the reference recorded: each one derived, none tuned.

Where a recorded value depends on the rounding of the machine that recorded it, tests
compare with the bound derived here instead of bit equality, so that they hold on any CPU.
"""

from __future__ import annotations

import torch

from pyramid_core.noise import block_noise_cholesky
from pyramid_core.rng import standard_normal

FP32_EPS = 2.0**-24                 # unit roundoff of fp32

# torch.randn (what the reference draws its noise with) runs fp32 Box-Muller with
# vectorised log/cos/sin on AVX2/AVX-512 CPUs and libm elsewhere: values differ by a few
# fp32 ulps of the radius r <= sqrt(-2 ln 2^-24) = 5.77 (24-bit uniforms), under
# 8 ulp(5.77) = 8 * 2^-21 = 2^-18. Measured: 2.3e-6 over 1e6 draws.
TORCH_RANDN_ACROSS_CPUS = 2.0**-18

# The reference factorises the block covariance S in fp32 with LAPACK. Every entry of its
# factor but the last pivot is the exact one rounded, within a couple of fp32 ulps (entries
# <= 1: 2^-22). The last pivot is sqrt(r), r the rounding residue of
# 1 - (L30^2 + L31^2 + L32^2), whose exact value is 0: at most 4 fp32 roundings of numbers
# <= 1, so |r| <= 4 * 2^-24 and the pivot is at most 2^-11 (the machine that recorded the
# golden data got 4.2e-4).
REFERENCE_FACTOR_ENTRY_ERROR = 2.0**-22
REFERENCE_FACTOR_LAST_PIVOT = 2.0**-11


def as_blocks(noise: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (N, 4): the 2x2 blocks in the reference's draw order, pixels row-major."""
    *lead, height, width = noise.shape
    return noise.reshape(*lead, height // 2, 2, width // 2, 2).movedim(-3, -2).reshape(-1, 4)


def block_noise_tolerance(eps: torch.Tensor, gamma: float) -> torch.Tensor:
    """(N, 4) bound on |reference block noise - ours| when both used the (N, 4) draws ``eps``.

    Value j differs by at most 2^-22 sum_k |eps_k| (the factor's rounded entries), plus
    2^-11 |eps_3| for j = 3 (its last pivot), plus the rounding of the products: 4 fp32 ulps
    of sum_k |L_jk eps_k| for its fp32 matmul and one for our own rounding.
    """
    abs_eps = eps.abs().double()
    bound = REFERENCE_FACTOR_ENTRY_ERROR * abs_eps.sum(-1, keepdim=True).expand(-1, 4).clone()
    bound[:, 3] += REFERENCE_FACTOR_LAST_PIVOT * abs_eps[:, 3]
    return bound + 5 * FP32_EPS * (abs_eps @ block_noise_cholesky(gamma).double().abs().T)


def assert_block_noise_matches_reference(ours: torch.Tensor, recorded: torch.Tensor, gamma: float,
                                         generator_state: torch.Tensor) -> None:
    """``ours`` was drawn from a generator in ``generator_state``; ``recorded`` is the
    reference's block noise from its global RNG in the same state."""
    ours, recorded = as_blocks(ours).double(), as_blocks(recorded).double()
    eps = standard_normal(ours.shape, torch.Generator().set_state(generator_state))
    difference = (ours - recorded).abs()
    assert (difference <= block_noise_tolerance(eps, gamma)).all(), f"max difference {difference.max().item():.3g}"
    # The bound is not slack: the reference's last values carry its rounded pivot.
    pivot = (difference[:, 3] / eps[:, 3].abs().double().clamp_min(0.5)).max().item()
    assert 1e-5 < pivot <= REFERENCE_FACTOR_LAST_PIVOT, pivot
